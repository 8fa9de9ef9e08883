#pragma once
//! @file thread_communicator.hpp
//! N ranks as threads of one process, sharing memory. Each collective publishes its buffers,
//! meets the other ranks at a barrier, lets every rank compute its own part of the result
//! directly from the others' buffers (sums in rank order, so results are bitwise reproducible
//! and independent of thread timing), and meets them again before returning.
//!
//! A waiting rank sleeps on a condition variable: eight ranks run well on two cores. Every
//! collective has a deadline; a rank that never arrives makes the others throw a
//! `timeout_error` naming the collective, its sequence number and the missing ranks. Ranks
//! that call different collectives (kind, count, element type, operation, root) all throw the
//! same `mismatch_error` naming the rank that diverges, before any memory is touched.
//!
//! A rooted `reduce` leaves the rank-ordered reduction in the root's `recv` only: each rank
//! reduces one chunk of it from every rank's input (as the first phase of an all-reduce), so
//! its bits are those of `reduce_scatter` and `all_reduce`, and no other rank's memory is written.
//!
//! Non-blocking forms (`ireduce_scatter`, `iall_gather`, `iall_reduce`, `ireduce`,
//! `ibroadcast`) queue the collective and return a `thread_request`; the collective runs when that request (or a later one) is
//! waited, or when a blocking collective is called. Collectives run in the order they were
//! started, so ranks that start them in the same order stay in step. Thread ranks make no
//! progress in the background: these forms let an engine's pipelined path run (and be tested)
//! with thread ranks; they overlap nothing.

#include <algorithm>
#include <array>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "zero/communicator.hpp"

namespace zero {

struct thread_group_options {
  std::chrono::milliseconds timeout{std::chrono::minutes(5)};  //!< deadline of each collective
  //! Testing hook: when set, every rank calls it inside every collective, after all ranks have
  //! published their buffers and before it reads the others' (for example to sleep a random
  //! time, so that soak tests meet every interleaving). Called on the rank's own thread.
  std::function<void(int rank, collective kind, std::uint64_t sequence)> inside_collective{};
};

class thread_communicator;

//! The shared state of N thread ranks. Create one, then give rank r `communicator(r)` (or let
//! `run` start the threads). A group that a failure broke stays broken: make a new one.
class thread_group {
 public:
  explicit thread_group(int world_size, thread_group_options options = {})
      : world_size_(world_size), options_(options) {
    if (world_size < 1) throw usage_error("zero: thread_group world_size must be >= 1, got " + std::to_string(world_size));
    if (options.timeout.count() <= 0) throw usage_error("zero: thread_group timeout must be positive");
    slots_.resize(static_cast<std::size_t>(world_size));
    arrivals_.resize(static_cast<std::size_t>(world_size));
    touching_.resize(static_cast<std::size_t>(world_size));
  }
  thread_group(const thread_group&) = delete;
  thread_group& operator=(const thread_group&) = delete;

  int world_size() const noexcept { return world_size_; }
  const thread_group_options& options() const noexcept { return options_; }

  //! The endpoint of rank `rank`. @pre 0 <= rank < world_size; one endpoint per rank in use.
  inline thread_communicator communicator(int rank);

  //! Runs `fn(thread_communicator&)` on world_size threads, one per rank, and waits for all.
  //! A rank whose `fn` throws leaves the group, so the others fail fast instead of waiting
  //! for their deadline; the first root-cause exception (lowest rank) is rethrown.
  template <class F>
  void run(F&& fn);

  //! Marks rank `rank` as gone: every rank waiting in or entering a collective throws a
  //! `communicator_error` naming it.
  void leave(int rank, const std::string& reason) {
    std::lock_guard lock(mutex_);
    touching_[static_cast<std::size_t>(rank)] = 0;
    if (!broken_) {
      broken_ = true;
      broken_kind_ = failure::left;
      broken_reason_ = "zero: rank " + std::to_string(rank) + " left the thread group: " + reason;
    }
    cv_.notify_all();
  }

 private:
  friend class thread_communicator;
  enum class failure { none, timeout, left };

  struct slot {
    collective kind{};
    reduce_op op{};
    std::string_view type;
    std::size_t count = 0;
    int root = 0;
    const void* send = nullptr;
    void* recv = nullptr;
    std::uint64_t sequence = 0;
  };

  void break_group(const std::string& reason) {
    std::lock_guard lock(mutex_);
    if (!broken_) {
      broken_ = true;
      broken_kind_ = failure::left;
      broken_reason_ = "zero: thread group unusable after an earlier failure: " + reason;
    }
    cv_.notify_all();
  }

  [[noreturn]] void throw_broken() const {
    if (broken_kind_ == failure::timeout) throw timeout_error(broken_reason_);
    throw communicator_error(broken_reason_);
  }

  //! Rank `rank` starts or stops reading and writing the other ranks' buffers (a collective's
  //! data phase, between its first and last barrier).
  void touch_others(int rank, bool touching) {
    std::lock_guard lock(mutex_);
    touching_[static_cast<std::size_t>(rank)] = touching ? 1 : 0;
    if (!touching && broken_) cv_.notify_all();  // only a broken group has ranks waiting on this
  }

  //! Before a rank throws out of a collective: it stops touching the others' buffers, and waits
  //! until no other rank touches its own (a peer still copying finishes its copy; it throws at
  //! its next barrier). So a rank that throws may free or reuse its buffers at once.
  void settle_before_throw(std::unique_lock<std::mutex>& lock, int rank) {
    touching_[static_cast<std::size_t>(rank)] = 0;
    cv_.notify_all();
    cv_.wait(lock, [&] {
      for (char t : touching_)
        if (t != 0) return false;
      return true;
    });
  }

  //! Waits until every rank has arrived at this barrier, or throws at the deadline.
  void arrive(int rank, std::chrono::steady_clock::time_point deadline, collective kind, std::uint64_t sequence) {
    std::unique_lock lock(mutex_);
    if (broken_) {
      settle_before_throw(lock, rank);
      throw_broken();
    }
    const std::uint64_t mine = ++arrivals_[static_cast<std::size_t>(rank)];
    const std::uint64_t generation = generation_;
    if (++arrived_ == world_size_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
      return;
    }
    if (cv_.wait_until(lock, deadline, [&] { return generation_ != generation || broken_; })) {
      if (generation_ != generation) return;
      settle_before_throw(lock, rank);
      throw_broken();
    }
    std::string missing;
    for (int r = 0; r < world_size_; ++r) {
      if (arrivals_[static_cast<std::size_t>(r)] < mine) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
    }
    const auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(options_.timeout).count();
    broken_ = true;
    broken_kind_ = failure::timeout;
    broken_reason_ = "zero: thread_communicator " + std::string(to_string(kind)) + " #" + std::to_string(sequence) +
                     " timed out after " + std::to_string(waited) + " ms (waiting on rank " + std::to_string(rank) +
                     " of " + std::to_string(world_size_) + "): rank(s) " + missing + " never arrived";
    settle_before_throw(lock, rank);
    throw timeout_error(broken_reason_);
  }

  int world_size_;
  thread_group_options options_;
  std::vector<slot> slots_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<std::uint64_t> arrivals_;
  std::vector<char> touching_;  // per rank: inside a collective's data phase (not vector<bool>)
  std::uint64_t generation_ = 0;
  int arrived_ = 0;
  bool broken_ = false;
  failure broken_kind_ = failure::none;
  std::string broken_reason_;
};

//! A collective started by a non-blocking form of `thread_communicator`. Move-only; waits for
//! its collective when destroyed (quietly, after a failure).
class thread_request {
 public:
  thread_request() = default;
  thread_request(thread_request&& o) noexcept : comm_(std::exchange(o.comm_, nullptr)), ticket_(o.ticket_) {}
  thread_request& operator=(thread_request&& o) noexcept {
    if (this != &o) {
      finish_quietly();
      comm_ = std::exchange(o.comm_, nullptr);
      ticket_ = o.ticket_;
    }
    return *this;
  }
  thread_request(const thread_request&) = delete;
  thread_request& operator=(const thread_request&) = delete;
  ~thread_request() { finish_quietly(); }

  //! Runs every collective of this rank started up to this one, in order.
  //! @throws as the blocking collectives do
  inline void wait();
  //! Whether the collective has run (or the request is empty).
  inline bool done() const noexcept;

 private:
  friend class thread_communicator;
  thread_request(thread_communicator* comm, std::uint64_t ticket) : comm_(comm), ticket_(ticket) {}
  inline void finish_quietly() noexcept;

  thread_communicator* comm_ = nullptr;
  std::uint64_t ticket_ = 0;
};

//! One rank's endpoint of a `thread_group`. Satisfies `zero::communicator`,
//! `zero::nonblocking_communicator`, `zero::rooted_communicator` and
//! `zero::nonblocking_rooted_communicator`.
class thread_communicator {
 public:
  thread_communicator(thread_group& group, int rank) : group_(&group), rank_(rank) {
    if (rank < 0 || rank >= group.world_size())
      throw usage_error("zero: thread_communicator rank " + std::to_string(rank) + " outside a group of " +
                        std::to_string(group.world_size()));
  }
  //! Neither copyable nor movable: an engine and the requests in flight keep the endpoint's
  //! address, so it stays where it was made (`auto comm = group.communicator(r);` constructs
  //! it in place; keep endpoints in a std::deque or behind a pointer, not in a std::vector).
  thread_communicator(const thread_communicator&) = delete;
  thread_communicator& operator=(const thread_communicator&) = delete;

  int rank() const noexcept { return rank_; }
  int world_size() const noexcept { return group_->world_size(); }
  const traffic_counters& traffic() const noexcept { return traffic_; }
  //! Collectives this rank has started (the sequence number of the next one, minus one).
  std::uint64_t sequence() const noexcept { return sequence_; }

  //! recv[i] = op over ranks of send_r[rank * count + i]. In place: recv == send + rank * count.
  template <reducible T>
  void reduce_scatter(const T* send, T* recv, std::size_t count, reduce_op op = reduce_op::sum) {
    run_queued(queue_end_);
    run_reduce_scatter(send, recv, count, op);
  }

  //! recv[r * count + i] = send_r[i]. In place: send == recv + rank * count.
  template <class T>
  void all_gather(const T* send, T* recv, std::size_t count) {
    run_queued(queue_end_);
    run_all_gather(send, recv, count);
  }

  //! recv[i] = op over ranks of send_r[i]. In place: send == recv.
  template <reducible T>
  void all_reduce(const T* send, T* recv, std::size_t count, reduce_op op = reduce_op::sum) {
    run_queued(queue_end_);
    run_all_reduce(send, recv, count, op);
  }

  //! data on every rank = data on `root`.
  template <class T>
  void broadcast(T* data, std::size_t count, int root) {
    check_root(collective::broadcast, root);
    run_queued(queue_end_);
    run_broadcast(data, count, root);
  }

  //! On rank `root`: recv[i] = op over ranks of send_r[i]; nothing is written on the other ranks
  //! (their `recv` may be null). In place: send == recv.
  //! @throws usage_error if root is outside [0, world_size), before anything runs
  template <reducible T>
  void reduce(const T* send, T* recv, std::size_t count, reduce_op op, int root) {
    check_root(collective::reduce, root);
    run_queued(queue_end_);
    run_reduce(send, recv, count, op, root);
  }

  void barrier() {
    run_queued(queue_end_);
    const auto d = begin<std::uint8_t>(collective::barrier, nullptr, nullptr, 0, reduce_op::sum, 0);
    end(d, collective::barrier, 0);
  }

  // ---- non-blocking forms ---------------------------------------------------------------

  //! As `reduce_scatter`, run when the request is waited (see the file comment).
  //! @pre the buffers stay valid and `send` unchanged until then
  template <reducible T>
  [[nodiscard]] thread_request ireduce_scatter(const T* send, T* recv, std::size_t count, reduce_op op = reduce_op::sum) {
    return enqueue({send, recv, count, op, 0, [](thread_communicator& c, const queued& q) {
                      c.run_reduce_scatter(static_cast<const T*>(q.send), static_cast<T*>(q.recv), q.count, q.op);
                    }});
  }
  template <class T>
  [[nodiscard]] thread_request iall_gather(const T* send, T* recv, std::size_t count) {
    return enqueue({send, recv, count, reduce_op::sum, 0, [](thread_communicator& c, const queued& q) {
                      c.run_all_gather(static_cast<const T*>(q.send), static_cast<T*>(q.recv), q.count);
                    }});
  }
  template <reducible T>
  [[nodiscard]] thread_request iall_reduce(const T* send, T* recv, std::size_t count, reduce_op op = reduce_op::sum) {
    return enqueue({send, recv, count, op, 0, [](thread_communicator& c, const queued& q) {
                      c.run_all_reduce(static_cast<const T*>(q.send), static_cast<T*>(q.recv), q.count, q.op);
                    }});
  }
  //! As `reduce`; a root outside the group throws usage_error here, at the call.
  template <reducible T>
  [[nodiscard]] thread_request ireduce(const T* send, T* recv, std::size_t count, reduce_op op, int root) {
    check_root(collective::reduce, root);
    return enqueue({send, recv, count, op, root, [](thread_communicator& c, const queued& q) {
                      c.run_reduce(static_cast<const T*>(q.send), static_cast<T*>(q.recv), q.count, q.op, q.root);
                    }});
  }
  //! As `broadcast`; a root outside the group throws usage_error here, at the call.
  template <class T>
  [[nodiscard]] thread_request ibroadcast(T* data, std::size_t count, int root) {
    check_root(collective::broadcast, root);
    return enqueue({data, data, count, reduce_op::sum, root, [](thread_communicator& c, const queued& q) {
                      c.run_broadcast(static_cast<T*>(q.recv), q.count, q.root);
                    }});
  }
  //! Thread ranks advance nothing in the background: a no-op.
  void progress() noexcept {}
  //! Collectives started and not yet run.
  std::size_t queued_count() const noexcept { return static_cast<std::size_t>(queue_end_ - queue_begin_); }

 private:
  friend class thread_request;
  using time_point = std::chrono::steady_clock::time_point;

  // A queued non-blocking collective; `run` is its blocking form for the element type.
  struct queued {
    const void* send;
    void* recv;
    std::size_t count;
    reduce_op op;
    int root;
    void (*run)(thread_communicator&, const queued&);
  };
  static constexpr std::size_t queue_capacity = 16;  // more in flight: the oldest runs first

  // The collectives themselves, after the queue ahead of them has run.

  template <reducible T>
  void run_reduce_scatter(const T* send, T* recv, std::size_t count, reduce_op op) {
    const auto d = begin<T>(collective::reduce_scatter, send, recv, count, op, 0);
    const std::size_t offset = static_cast<std::size_t>(rank_) * count;
    detail::reduce_ranks(recv, count, world_size(), [&](int r) { return send_of<T>(r) + offset; }, op);
    end(d, collective::reduce_scatter, count * sizeof(T) * static_cast<std::size_t>(world_size()));
  }

  template <class T>
  void run_all_gather(const T* send, T* recv, std::size_t count) {
    const auto d = begin<T>(collective::all_gather, send, recv, count, reduce_op::sum, 0);
    for (int r = 0; r < world_size(); ++r) {
      T* to = recv + static_cast<std::size_t>(r) * count;
      const T* from = send_of<T>(r);
      if (from != to && count != 0) std::memmove(to, from, count * sizeof(T));
    }
    end(d, collective::all_gather, count * sizeof(T) * static_cast<std::size_t>(world_size()));
  }

  template <reducible T>
  void run_all_reduce(const T* send, T* recv, std::size_t count, reduce_op op) {
    const auto d = begin<T>(collective::all_reduce, send, recv, count, op, 0);
    const auto mine = chunk(count, rank_);
    const std::size_t lo = mine.first, hi = mine.second;  // (not a structured binding: clang 14 cannot capture one)
    // Phase 1: this rank reduces its chunk into its own recv; nobody else reads that chunk of it.
    detail::reduce_ranks(recv + lo, hi - lo, world_size(), [&](int r) { return send_of<T>(r) + lo; }, op);
    group_->arrive(rank_, d, collective::all_reduce, sequence_);
    // Phase 2: copy every other rank's finished chunk.
    for (int r = 0; r < world_size(); ++r) {
      if (r == rank_) continue;
      const auto [b, e] = chunk(count, r);
      if (e > b) std::memcpy(recv + b, recv_of<T>(r) + b, (e - b) * sizeof(T));
    }
    end(d, collective::all_reduce, 2 * count * sizeof(T));
  }

  template <class T>
  void run_broadcast(T* data, std::size_t count, int root) {
    const auto d = begin<T>(collective::broadcast, data, data, count, reduce_op::sum, root);
    if (rank_ != root && count != 0) std::memcpy(data, recv_of<T>(root), count * sizeof(T));
    end(d, collective::broadcast, count * sizeof(T));
  }

  template <reducible T>
  void run_reduce(const T* send, T* recv, std::size_t count, reduce_op op, int root) {
    const auto d = begin<T>(collective::reduce, send, recv, count, op, root);
    // every rank reduces its chunk straight into the root's recv (the chunks are disjoint, and an
    // in-place root's input element is read before the same element is written)
    const auto mine = chunk(count, rank_);
    const std::size_t lo = mine.first, hi = mine.second;
    if (hi > lo) detail::reduce_ranks(recv_of<T>(root) + lo, hi - lo, world_size(), [&](int r) { return send_of<T>(r) + lo; }, op);
    end(d, collective::reduce, count * sizeof(T));
  }

  void check_root(collective kind, int root) const {
    if (root < 0 || root >= world_size())
      throw usage_error("zero: " + std::string(to_string(kind)) + " root " + std::to_string(root) + " on rank " +
                        std::to_string(rank_) + " outside a group of " + std::to_string(world_size()));
  }

  thread_request enqueue(const queued& q) {
    if (queue_end_ - queue_begin_ == queue_capacity) run_queued(queue_begin_ + 1);
    queue_[queue_end_ % queue_capacity] = q;
    return {this, ++queue_end_};
  }

  //! Runs the queued collectives with tickets up to `ticket` (tickets count from 1), in order.
  void run_queued(std::uint64_t ticket) {
    while (queue_begin_ < ticket && queue_begin_ < queue_end_) {
      const queued q = queue_[queue_begin_ % queue_capacity];
      ++queue_begin_;  // first: the blocking form below must not run it again
      q.run(*this, q);
    }
  }

  template <class T>
  const T* send_of(int r) const noexcept { return static_cast<const T*>(group_->slots_[static_cast<std::size_t>(r)].send); }
  template <class T>
  T* recv_of(int r) const noexcept { return static_cast<T*>(group_->slots_[static_cast<std::size_t>(r)].recv); }

  std::pair<std::size_t, std::size_t> chunk(std::size_t count, int r) const noexcept {
    const std::size_t n = static_cast<std::size_t>(world_size());
    const std::size_t per = count / n, extra = count % n, ur = static_cast<std::size_t>(r);
    const std::size_t b = ur * per + std::min(ur, extra);
    return {b, b + per + (ur < extra ? 1 : 0)};
  }

  template <class T>
  time_point begin(collective kind, const void* send, void* recv, std::size_t count, reduce_op op, int root) {
    const time_point deadline = std::chrono::steady_clock::now() + group_->options_.timeout;
    ++sequence_;
    auto& mine = group_->slots_[static_cast<std::size_t>(rank_)];
    mine = {kind, op, type_name<T>(), count, root, send, recv, sequence_};
    group_->arrive(rank_, deadline, kind, sequence_);
    check_agreement();
    group_->touch_others(rank_, true);  // until end(): the others wait for it before they throw
    if (group_->options_.inside_collective) {
      try {
        group_->options_.inside_collective(rank_, kind, sequence_);
      } catch (...) {
        group_->touch_others(rank_, false);
        throw;
      }
    }
    return deadline;
  }

  void end(time_point deadline, collective kind, std::uint64_t bytes) {
    group_->touch_others(rank_, false);
#ifndef ZERO_TEST_ONLY_SKIP_END_BARRIER
    group_->arrive(rank_, deadline, kind, sequence_);
#else
    // A planted bug, for tests only (tests/reliability): no rank waits for the others to finish
    // reading its buffers before returning. ThreadSanitizer and the soak test must catch it.
    (void)deadline;
#endif
    traffic_.add(kind, bytes);
  }

  static std::string describe(const thread_group::slot& s) {
    std::string d = std::string(to_string(s.kind)) + "<" + std::string(s.type) + ">(count " + std::to_string(s.count);
    if (s.kind == collective::broadcast || s.kind == collective::reduce) d += ", root " + std::to_string(s.root);
    if (s.kind == collective::reduce_scatter || s.kind == collective::all_reduce || s.kind == collective::reduce)
      d += s.op == reduce_op::sum ? ", sum" : ", max";
    return d + ")";
  }

  //! Every rank sees the same slots, so every rank throws the same error, after a barrier that
  //! keeps the slots unchanged until all have read them.
  void check_agreement() {
    const auto& slots = group_->slots_;
    std::map<std::string, std::vector<int>> calls;
    bool same = true;
    for (int r = 1; r < world_size() && same; ++r) {
      const auto &a = slots[0], &b = slots[static_cast<std::size_t>(r)];
      same = a.kind == b.kind && a.op == b.op && a.type == b.type && a.count == b.count && a.root == b.root;
    }
    if (same) return;
    for (int r = 0; r < world_size(); ++r) calls[describe(slots[static_cast<std::size_t>(r)])].push_back(r);
    // the call most ranks make is taken as intended (ties: the one rank 0 makes)
    const std::string expected = std::max_element(calls.begin(), calls.end(), [&](const auto& a, const auto& b) {
                                   if (a.second.size() != b.second.size()) return a.second.size() < b.second.size();
                                   return a.second.front() > b.second.front();
                                 })->first;
    std::string message = "zero: collective mismatch at call #" + std::to_string(sequence_) + " of a thread group of " +
                          std::to_string(world_size()) + ": most ranks call " + expected;
    for (const auto& [call, ranks] : calls) {
      if (call == expected) continue;
      for (int r : ranks) message += "; rank " + std::to_string(r) + " calls " + call;
    }
    group_->arrive(rank_, std::chrono::steady_clock::now() + group_->options_.timeout, slots[static_cast<std::size_t>(rank_)].kind, sequence_);
    group_->break_group(message);  // the ranks are out of step: later collectives must not run
    throw mismatch_error(message);
  }

  thread_group* group_;
  int rank_;
  std::uint64_t sequence_ = 0;
  traffic_counters traffic_;
  std::array<queued, queue_capacity> queue_{};
  std::uint64_t queue_begin_ = 0;  // tickets already run
  std::uint64_t queue_end_ = 0;    // tickets handed out
};

static_assert(communicator<thread_communicator>);
static_assert(nonblocking_communicator<thread_communicator>);
static_assert(rooted_communicator<thread_communicator>);
static_assert(nonblocking_rooted_communicator<thread_communicator>);

inline void thread_request::wait() {
  if (comm_ != nullptr) comm_->run_queued(ticket_);
}
inline bool thread_request::done() const noexcept { return comm_ == nullptr || comm_->queue_begin_ >= ticket_; }
inline void thread_request::finish_quietly() noexcept {
  if (comm_ != nullptr) {
    try {
      comm_->run_queued(ticket_);
    } catch (...) {  // the group is broken now; the rank's next collective reports it
    }
  }
  comm_ = nullptr;
}

inline thread_communicator thread_group::communicator(int rank) { return thread_communicator(*this, rank); }

template <class F>
void thread_group::run(F&& fn) {
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(world_size_));
  std::vector<char> root_cause(static_cast<std::size_t>(world_size_), 0);  // not vector<bool>: written concurrently
  {
    std::vector<std::jthread> threads;
    threads.reserve(static_cast<std::size_t>(world_size_));
    for (int r = 0; r < world_size_; ++r) {
      threads.emplace_back([&, r] {
        const auto ur = static_cast<std::size_t>(r);
        try {
          thread_communicator comm(*this, r);
          fn(comm);
        } catch (const communicator_error& e) {  // a consequence of another rank's failure
          errors[ur] = std::current_exception();
          leave(r, e.what());
        } catch (const std::exception& e) {
          errors[ur] = std::current_exception();
          root_cause[ur] = 1;
          leave(r, e.what());
        } catch (...) {
          errors[ur] = std::current_exception();
          root_cause[ur] = 1;
          leave(r, "an exception not derived from std::exception");
        }
      });
    }
  }
  for (std::size_t r = 0; r < errors.size(); ++r)
    if (errors[r] && root_cause[r] != 0) std::rethrow_exception(errors[r]);
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace zero
