#pragma once
//! @file engine/unit_collectives.hpp
//! Where a reduction unit is reduced across the ranks, and where its updated parameters are
//! gathered: which collective each kind of unit takes.
//!
//! | unit                          | reduction (stages 1, 2)                 | after the update      |
//! |-------------------------------|-----------------------------------------|-----------------------|
//! | shared by every rank          | reduce-scatter: each rank its slice     | all-gather            |
//! | owned whole by one rank       | reduce to the owner (rooted)            | broadcast from owner  |
//! Stage 0 all-reduces every unit. A communicator without a rooted reduce (`rooted_communicator`)
//! all-reduces an owned unit instead (twice the bytes; the owner keeps its sum). With
//! `staging_buffers` >= 2 each collective is started (`i...` forms) where the communicator has
//! the non-blocking form, and run to completion otherwise.

#include <cstddef>
#include <utility>

#include "zero/communicator.hpp"
#include "zero/partitioner.hpp"

namespace zero::engine {

//! The request a blocking communicator "returns": complete from the start.
struct completed_request {
  void wait() noexcept {}
  bool done() const noexcept { return true; }
};
template <class Comm>
struct request_of {
  using type = completed_request;
};
template <nonblocking_communicator Comm>
struct request_of<Comm> {
  using type = decltype(std::declval<Comm&>().ireduce_scatter(std::declval<const float*>(), std::declval<float*>(),
                                                               std::size_t{}, reduce_op::sum));
};

//! The collectives of one unit over communicator `Comm` (see the file comment).
template <class Comm>
struct unit_collectives {
  using request = typename request_of<Comm>::type;
  static constexpr bool nonblocking = nonblocking_communicator<Comm>;
  static constexpr bool rooted = rooted_communicator<Comm>;
  static constexpr bool rooted_nonblocking = nonblocking_rooted_communicator<Comm>;

  //! What `reduce` did.
  struct outcome {
    bool started = false;    //!< the collective is in flight: `*request` completes it
    bool in_result = false;  //!< this rank's part of the sum is (or will be) in `result`
  };

  //! Reduces `buffer` (u.elements(world) elements, every rank's contribution) across the ranks.
  //! Stage 0 (`all = true`): the sum of every element, in place. Otherwise this rank's part of
  //! the sum (its slice of a shared unit, the whole unit on its owner, nothing elsewhere) goes
  //! to `result` when the collective can write it there (else it is in `buffer` at
  //! `u.buffer_index(rank, 0)`). When `request` is not null the collective is started into it
  //! if the communicator has the non-blocking form; otherwise it runs to completion.
  template <class T>
  static outcome reduce(Comm& comm, const reduction_unit& u, int world, int rank, bool all, T* buffer, T* result,
                        request* started) {
    [[maybe_unused]] const bool start = started != nullptr;
    const std::size_t n = u.elements(world);
    if (all || (u.owner != every_rank && !rooted)) {
      if constexpr (nonblocking) {
        if (start) {
          *started = comm.iall_reduce(buffer, buffer, n, reduce_op::sum);
          return {true, false};
        }
      }
      comm.all_reduce(buffer, buffer, n, reduce_op::sum);
      return {false, false};
    }
    if (u.owner == every_rank) {
      if constexpr (nonblocking) {
        if (start) {
          *started = comm.ireduce_scatter(buffer, result, u.slice, reduce_op::sum);
          return {true, true};
        }
      }
      comm.reduce_scatter(buffer, result, u.slice, reduce_op::sum);
      return {false, true};
    }
    if constexpr (rooted) {
      T* to = u.owner == rank ? result : nullptr;
      if constexpr (rooted_nonblocking) {
        if (start) {
          *started = comm.ireduce(buffer, to, u.slice, reduce_op::sum, u.owner);
          return {true, true};
        }
      }
      comm.reduce(buffer, to, u.slice, reduce_op::sum, u.owner);
    }
    return {false, true};
  }

  //! Sends every rank's updated slice of unit u to every rank holding none of it: this rank's
  //! slice is `mine`; the result lies where `gather_source` says. Started into `*started` (and
  //! true returned) as `reduce` does.
  template <class T>
  static bool gather(Comm& comm, const reduction_unit& u, int rank, T* mine, T* buffer, request* started) {
    [[maybe_unused]] const bool start = started != nullptr;
    if (u.owner == every_rank) {
      if constexpr (nonblocking) {
        if (start) {
          *started = comm.iall_gather(static_cast<const T*>(mine), buffer, u.slice);
          return true;
        }
      }
      comm.all_gather(static_cast<const T*>(mine), buffer, u.slice);
      return false;
    }
    return broadcast(comm, u.owner == rank ? mine : buffer, u.slice, u.owner, started);
  }

  //! Broadcasts `count` elements of `data` from rank `root`, in place; started into `*started`
  //! (and true returned) where the communicator has `ibroadcast` and `started` is not null.
  template <class T>
  static bool broadcast(Comm& comm, T* data, std::size_t count, int root, request* started) {
    if constexpr (rooted_nonblocking) {
      if (started != nullptr) {
        *started = comm.ibroadcast(data, count, root);
        return true;
      }
    }
    comm.broadcast(data, count, root);
    return false;
  }

  //! Where unit u's gathered values are: slices at `u.buffer_index(r, 0)` of the result.
  template <class T>
  static T* gather_source(const reduction_unit& u, int rank, T* mine, T* buffer) noexcept {
    return u.owner != every_rank && u.owner == rank ? mine : buffer;
  }
};

}  // namespace zero::engine
