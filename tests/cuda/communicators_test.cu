// The device communicators:
//  * device_thread_communicator (ranks as threads on one GPU) bitwise equal to
//    thread_communicator on the same inputs, for 1 to 4 ranks, every collective, fp32, bf16,
//    fp64 and u64, in place and not, sums and NaN-propagating max; host memory delegated;
//    ranks that call different collectives all throw the same mismatch_error;
//  * device_thread_communicator's rooted reduce (reduce, ireduce) and ibroadcast, for 1 to 4
//    ranks and every root, fp32 (sum and max), bf16 and fp16, in place at the root and not:
//    the root's result bitwise equal to thread_communicator's arithmetic and to the root's slice
//    of a reduce-scatter of the same data, the other ranks' buffers untouched, traffic counted;
//    on host memory; a root that ranks disagree on, or memory of another kind, a mismatch_error;
//  * nccl_communicator with one rank: every collective on device memory and on host memory
//    (staged), the non-blocking forms, the rooted reduce and its non-blocking forms, traffic
//    counts, refused arguments.
// Needs a GPU: without one the test main exits 77 (skipped).

#include <doctest/doctest.h>

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include "device_fixture.hpp"
#include "zero/cuda/device_thread_communicator.cuh"
#include "zero/thread_communicator.hpp"
#if defined(ZERO_TEST_WITH_NCCL)
#include "zero/cuda/nccl_communicator.hpp"
#endif

// an engine and the requests in flight keep the communicator's address: neither copy nor move
template <class C>
constexpr bool stays_put = !std::is_copy_constructible_v<C> && !std::is_move_constructible_v<C> &&
                           !std::is_copy_assignable_v<C> && !std::is_move_assignable_v<C>;
static_assert(stays_put<zero::device_thread_communicator>);
#if defined(ZERO_TEST_WITH_NCCL)
static_assert(stays_put<zero::nccl_communicator>);
#endif

namespace {

using namespace zero_test;
using zero::bf16;

//! Each rank's inputs: `n` elements, distinct per rank (a NaN planted for max).
template <class T>
std::vector<T> rank_input(int rank, std::size_t n, bool plant_nan) {
  std::vector<T> v(n);
  for (std::size_t i = 0; i < n; ++i) {
    const float x = random_value(static_cast<std::uint64_t>(rank) + 77, i);
    if constexpr (std::is_integral_v<T>) v[i] = static_cast<T>(mix(static_cast<std::uint64_t>(rank) * 1000003u + i));
    else v[i] = zero::convert<T>(x);
  }
  if constexpr (!std::is_integral_v<T>)
    if (plant_nan && rank == 1 && n > 3) v[3] = zero::convert<T>(std::numeric_limits<float>::quiet_NaN());
  return v;
}

//! The results of one rank: reduce-scatter, all-gather, all-reduce (in place), broadcast.
template <class T>
struct results {
  std::vector<T> scattered, gathered, reduced, broadcast;
};

//! Runs the four collectives on `world` thread ranks, with host buffers (thread_communicator)
//! or device buffers (device_thread_communicator), and returns each rank's results.
template <class T, bool Device>
std::vector<results<T>> run_collectives(int world, std::size_t count, zero::reduce_op op, bool in_place) {
  std::vector<results<T>> out(static_cast<std::size_t>(world));
  zero::thread_group group(world);
  group.run([&](zero::thread_communicator& host) {
    const int r = host.rank();
    const std::size_t n = count * static_cast<std::size_t>(world);
    const auto input = rank_input<T>(r, n, op == zero::reduce_op::max);
    const auto mine = rank_input<T>(r + 10, count, false);
    auto& res = out[static_cast<std::size_t>(r)];
    if constexpr (Device) {
      zero::cuda::check(cudaSetDevice(0), "cudaSetDevice");
      cudaStream_t stream = nullptr;
      zero::cuda::check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
      {
        zero::device_thread_communicator comm(host, stream);
        device_vector<T> send(input), recv(count), gather(n), all(input), bc(mine);
        recv.poison_all();
        gather.poison_all();
        if (in_place) {
          comm.reduce_scatter(send.data(), send.data() + static_cast<std::size_t>(r) * count, count, op);
          zero::cuda::check(cudaMemcpyAsync(gather.data() + static_cast<std::size_t>(r) * count, bc.data(), count * sizeof(T),
                                            cudaMemcpyDeviceToDevice, stream),
                            "cudaMemcpyAsync");
          comm.all_gather(gather.data() + static_cast<std::size_t>(r) * count, gather.data(), count);
        } else {
          comm.reduce_scatter(send.data(), recv.data(), count, op);
          comm.all_gather(bc.data(), gather.data(), count);
        }
        comm.all_reduce(all.data(), all.data(), n, op);
        comm.broadcast(bc.data(), count, world - 1);
        comm.barrier();
        zero::cuda::check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
        if (in_place) {
          const auto whole = send.download();
          res.scattered.assign(whole.begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(r) * count),
                               whole.begin() + static_cast<std::ptrdiff_t>((static_cast<std::size_t>(r) + 1) * count));
        } else {
          res.scattered = recv.download();
        }
        res.gathered = gather.download();
        res.reduced = all.download();
        res.broadcast = bc.download();
        CHECK(comm.traffic().bytes_of(zero::collective::all_reduce) == 2 * n * sizeof(T));
        CHECK(comm.traffic().calls_of(zero::collective::barrier) == 1);
      }
      zero::cuda::check(cudaStreamDestroy(stream), "cudaStreamDestroy");
    } else {
      std::vector<T> send = input, recv(count, poison<T>()), gather(n, poison<T>()), all = input, bc = mine;
      if (in_place) {
        host.reduce_scatter(send.data(), send.data() + static_cast<std::size_t>(r) * count, count, op);
        std::copy(mine.begin(), mine.end(), gather.begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(r) * count));
        host.all_gather(gather.data() + static_cast<std::size_t>(r) * count, gather.data(), count);
        res.scattered.assign(send.begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(r) * count),
                             send.begin() + static_cast<std::ptrdiff_t>((static_cast<std::size_t>(r) + 1) * count));
      } else {
        host.reduce_scatter(send.data(), recv.data(), count, op);
        host.all_gather(bc.data(), gather.data(), count);
        res.scattered = recv;
      }
      host.all_reduce(all.data(), all.data(), n, op);
      host.broadcast(bc.data(), count, world - 1);
      host.barrier();
      res.gathered = gather;
      res.reduced = all;
      res.broadcast = bc;
    }
  });
  return out;
}

template <class T>
void check_against_thread_ranks(zero::reduce_op op) {
  for (int world = 1; world <= 4; ++world)
    for (bool in_place : {false, true}) {
      const std::size_t count = 1000 + static_cast<std::size_t>(world);  // chunks of all-reduce uneven
      CAPTURE(world);
      CAPTURE(in_place);
      const auto device = run_collectives<T, true>(world, count, op, in_place);
      const auto host = run_collectives<T, false>(world, count, op, in_place);
      for (int r = 0; r < world; ++r) {
        CAPTURE(r);
        const auto& d = device[static_cast<std::size_t>(r)];
        const auto& h = host[static_cast<std::size_t>(r)];
        check_bitwise(d.scattered, h.scattered, "reduce_scatter");
        check_bitwise(d.gathered, h.gathered, "all_gather");
        check_bitwise(d.reduced, h.reduced, "all_reduce");
        check_bitwise(d.broadcast, h.broadcast, "broadcast");
      }
    }
}

//! What reduce to rank `root` leaves there: thread_communicator's arithmetic on the ranks'
//! inputs (rank_input), computed on the host.
template <class T>
std::vector<T> reference_reduce(int world, std::size_t count, zero::reduce_op op) {
  std::vector<std::vector<T>> inputs;
  for (int r = 0; r < world; ++r) inputs.push_back(rank_input<T>(r, count, op == zero::reduce_op::max));
  std::vector<T> out(count);
  zero::detail::reduce_ranks(out.data(), count, world, [&](int r) { return inputs[static_cast<std::size_t>(r)].data(); }, op);
  return out;
}

//! One rank's buffers after the rooted collectives of run_rooted.
template <class T>
struct rooted_results {
  std::vector<T> reduced;    // the buffer reduce wrote into at the root (send itself in place)
  std::vector<T> ireduced;   // the same for ireduce
  std::vector<T> send;       // reduce's send buffer afterwards
  std::vector<T> scattered;  // this rank's slice of a reduce-scatter whose slice `root` holds reduce's input
  std::vector<T> broadcast;  // after ibroadcast from the root
  zero::traffic_counters traffic;
};

//! On `world` thread ranks with device buffers: reduce, ireduce and ibroadcast to `root`, an
//! empty reduce, then a reduce-scatter whose slice `root` is the reduce's input. In place, the
//! root reduces into its send buffers and the other ranks pass a null recv; otherwise every
//! rank passes a poisoned recv.
template <class T>
std::vector<rooted_results<T>> run_rooted(int world, std::size_t count, int root, zero::reduce_op op, bool in_place) {
  std::vector<rooted_results<T>> out(static_cast<std::size_t>(world));
  zero::thread_group group(world);
  group.run([&](zero::thread_communicator& host) {
    const int r = host.rank();
    const bool at_root = r == root;
    const auto input = rank_input<T>(r, count, op == zero::reduce_op::max);
    auto scatter_input = rank_input<T>(r + 20, count * static_cast<std::size_t>(world), false);
    std::copy(input.begin(), input.end(), scatter_input.begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(root) * count));
    auto& res = out[static_cast<std::size_t>(r)];
    zero::cuda::check(cudaSetDevice(0), "cudaSetDevice");
    cudaStream_t stream = nullptr;
    zero::cuda::check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
    {
      zero::device_thread_communicator comm(host, stream);
      device_vector<T> send(input), isend(input), recv(count), irecv(count), scatter_send(scatter_input), scattered(count),
          bc(rank_input<T>(r + 30, count, false));
      recv.poison_all();
      irecv.poison_all();
      scattered.poison_all();
      T* to = in_place ? (at_root ? send.data() : nullptr) : recv.data();
      T* ito = in_place ? (at_root ? isend.data() : nullptr) : irecv.data();
      comm.reduce(send.data(), to, count, op, root);
      auto request = comm.ireduce(isend.data(), ito, count, op, root);
      auto broadcast_request = comm.ibroadcast(bc.data(), count, root);
      request.wait();
      broadcast_request.wait();
      comm.reduce(static_cast<const T*>(nullptr), static_cast<T*>(nullptr), 0, op, root);  // meets, writes nothing
      comm.reduce_scatter(scatter_send.data(), scattered.data(), count, op);
      zero::cuda::check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
      res.reduced = in_place ? send.download() : recv.download();
      res.ireduced = in_place ? isend.download() : irecv.download();
      res.send = send.download();
      res.scattered = scattered.download();
      res.broadcast = bc.download();
      res.traffic = comm.traffic();
    }
    zero::cuda::check(cudaStreamDestroy(stream), "cudaStreamDestroy");
  });
  return out;
}

template <class T>
void check_rooted(zero::reduce_op op) {
  for (int world = 1; world <= 4; ++world)
    for (int root = 0; root < world; ++root)
      for (bool in_place : {false, true}) {
        const std::size_t count = 1000 + static_cast<std::size_t>(world);
        CAPTURE(world);
        CAPTURE(root);
        CAPTURE(in_place);
        const auto results = run_rooted<T>(world, count, root, op, in_place);
        const auto expected = reference_reduce<T>(world, count, op);
        const auto broadcast = rank_input<T>(root + 30, count, false);
        const std::vector<T> poisoned(count, poison<T>());
        for (int r = 0; r < world; ++r) {
          CAPTURE(r);
          const auto& x = results[static_cast<std::size_t>(r)];
          const auto input = rank_input<T>(r, count, op == zero::reduce_op::max);
          if (r == root) {
            check_bitwise(x.reduced, expected, "reduce at the root");
            check_bitwise(x.ireduced, expected, "ireduce at the root");
            check_bitwise(x.reduced, x.scattered, "reduce at the root against the root's slice of a reduce_scatter");
            if (!in_place) check_bitwise(x.send, input, "the root's send buffer unchanged");
          } else {
            check_bitwise(x.send, input, "a non-root's send buffer unchanged");
            if (!in_place) {
              check_bitwise(x.reduced, poisoned, "a non-root's recv untouched by reduce");
              check_bitwise(x.ireduced, poisoned, "a non-root's recv untouched by ireduce");
            }
          }
          check_bitwise(x.broadcast, broadcast, "ibroadcast");
          CHECK(x.traffic.calls_of(zero::collective::reduce) == 3);
          CHECK(x.traffic.bytes_of(zero::collective::reduce) == 2 * count * sizeof(T));
          CHECK(x.traffic.calls_of(zero::collective::broadcast) == 1);
          CHECK(x.traffic.bytes_of(zero::collective::broadcast) == count * sizeof(T));
          CHECK(x.traffic.bytes_of(zero::collective::reduce_scatter) == count * static_cast<std::size_t>(world) * sizeof(T));
        }
      }
}

//! Runs `body(comm, host)` on 3 thread ranks, each with a device_thread_communicator on the
//! legacy stream, and returns the messages of the mismatch_errors the ranks threw.
template <class Body>
std::vector<std::string> mismatch_errors(Body body) {
  zero::thread_group group(3);
  std::mutex m;
  std::vector<std::string> errors;
  try {
    group.run([&](zero::thread_communicator& host) {
      zero::cuda::check(cudaSetDevice(0), "cudaSetDevice");
      zero::device_thread_communicator comm(host, nullptr);
      try {
        body(comm, host);
      } catch (const zero::mismatch_error& e) {
        std::lock_guard lock(m);
        errors.push_back(e.what());
        throw;
      }
    });
  } catch (const zero::mismatch_error&) {
  }
  return errors;
}

}  // namespace

TEST_SUITE("cuda") {
  TEST_CASE("device_thread_communicator: bitwise equal to thread_communicator in fp32 bf16 fp64 and u64") {
    check_against_thread_ranks<float>(zero::reduce_op::sum);
    check_against_thread_ranks<float>(zero::reduce_op::max);
    check_against_thread_ranks<bf16>(zero::reduce_op::sum);
    check_against_thread_ranks<double>(zero::reduce_op::sum);
    check_against_thread_ranks<std::uint64_t>(zero::reduce_op::sum);
  }

  TEST_CASE("device_thread_communicator: reduce and ireduce and ibroadcast to every root in fp32 bf16 and fp16") {
    check_rooted<float>(zero::reduce_op::sum);
    check_rooted<float>(zero::reduce_op::max);
    check_rooted<bf16>(zero::reduce_op::sum);
    check_rooted<zero::fp16>(zero::reduce_op::sum);
  }

  TEST_CASE("device_thread_communicator: reduce on host memory and refused roots") {
    const int world = 3;
    const std::size_t count = 37;
    std::vector<std::vector<float>> reduced(world);
    std::vector<std::vector<bf16>> reduced16(world);
    std::vector<zero::traffic_counters> traffic(world);
    zero::thread_group group(world);
    group.run([&](zero::thread_communicator& host) {
      const int r = host.rank();
      zero::cuda::check(cudaSetDevice(0), "cudaSetDevice");
      zero::device_thread_communicator comm(host, nullptr);
      // root 1, into another buffer; the others pass a null recv
      auto send = rank_input<float>(r, count, false);
      std::vector<float> recv(count, poison<float>());
      comm.reduce(send.data(), r == 1 ? recv.data() : nullptr, count, zero::reduce_op::sum, 1);
      if (r == 1) reduced[1] = recv;
      check_bitwise(send, rank_input<float>(r, count, false), "send on host memory unchanged");
      // root 2, in place
      auto data = rank_input<bf16>(r, count, false);
      comm.reduce(data.data(), r == 2 ? data.data() : nullptr, count, zero::reduce_op::sum, 2);
      reduced16[static_cast<std::size_t>(r)] = data;
      // roots outside the group: refused on every rank before any rendezvous
      CHECK_THROWS_AS(comm.reduce(send.data(), recv.data(), count, zero::reduce_op::sum, world), zero::usage_error);
      CHECK_THROWS_AS(comm.reduce(send.data(), recv.data(), count, zero::reduce_op::sum, -1), zero::usage_error);
      CHECK_THROWS_AS(static_cast<void>(comm.ireduce(send.data(), recv.data(), count, zero::reduce_op::sum, world)),
                      zero::usage_error);
      CHECK_THROWS_AS(static_cast<void>(comm.ibroadcast(send.data(), count, world)), zero::usage_error);
      traffic[static_cast<std::size_t>(r)] = comm.traffic();
    });
    check_bitwise(reduced[1], reference_reduce<float>(world, count, zero::reduce_op::sum), "reduce on host memory");
    check_bitwise(reduced16[2], reference_reduce<bf16>(world, count, zero::reduce_op::sum), "bf16 reduce in place on host memory");
    check_bitwise(reduced16[0], rank_input<bf16>(0, count, false), "a non-root's buffer untouched");
    check_bitwise(reduced16[1], rank_input<bf16>(1, count, false), "a non-root's buffer untouched");
    for (const auto& t : traffic) {
      CHECK(t.calls_of(zero::collective::reduce) == 2);
      CHECK(t.bytes_of(zero::collective::reduce) == count * (sizeof(float) + sizeof(bf16)));
    }
  }

  TEST_CASE("device_thread_communicator: ranks disagreeing on the root of a reduce all throw the same mismatch_error") {
    const auto errors = mismatch_errors([](zero::device_thread_communicator& comm, zero::thread_communicator& host) {
      device_vector<float> buffer(std::vector<float>(4, 1.0f));
      comm.reduce(buffer.data(), buffer.data(), 4, zero::reduce_op::sum, host.rank() == 2 ? 1 : 0);
    });
    REQUIRE(errors.size() == 3);
    CHECK(errors[0] == errors[1]);
    CHECK(errors[1] == errors[2]);
    CHECK(errors[0].find("rank 0 calls reduce<fp32>(count 4, root 0, sum)") != std::string::npos);
    CHECK(errors[0].find("rank 2 calls reduce<fp32>(count 4, root 1, sum)") != std::string::npos);
  }

  TEST_CASE("device_thread_communicator: a reduce on host memory where the others pass device memory is a mismatch_error") {
    const auto errors = mismatch_errors([](zero::device_thread_communicator& comm, zero::thread_communicator& host) {
      std::vector<float> on_host(4, 1.0f);
      device_vector<float> on_device(on_host);
      float* data = host.rank() == 1 ? on_host.data() : on_device.data();
      comm.reduce(data, data, 4, zero::reduce_op::sum, 0);
    });
    REQUIRE(errors.size() == 3);
    CHECK(errors[0] == errors[1]);
    CHECK(errors[1] == errors[2]);
    CHECK(errors[0].find("rank 1 calls reduce<fp32>(count 4, root 0, sum, host memory)") != std::string::npos);
  }

  TEST_CASE("device_thread_communicator: host memory goes through the thread communicator") {
    zero::thread_group group(3);
    std::vector<std::vector<std::uint64_t>> gathered(3);
    group.run([&](zero::thread_communicator& host) {
      zero::cuda::check(cudaSetDevice(0), "cudaSetDevice");
      zero::device_thread_communicator comm(host, nullptr);
      const std::uint64_t mine[4] = {static_cast<std::uint64_t>(host.rank()), 1, 2, 3};
      std::vector<std::uint64_t> all(12);
      comm.all_gather(mine, all.data(), 4);
      gathered[static_cast<std::size_t>(host.rank())] = all;
    });
    for (const auto& g : gathered) {
      CHECK(g[0] == 0);
      CHECK(g[4] == 1);
      CHECK(g[8] == 2);
      CHECK(g[11] == 3);
    }
  }

  TEST_CASE("device_thread_communicator: ranks calling different collectives all throw the same mismatch_error") {
    zero::thread_group group(3);
    std::mutex m;
    std::vector<std::string> errors;
    try {
      group.run([&](zero::thread_communicator& host) {
        zero::cuda::check(cudaSetDevice(0), "cudaSetDevice");
        zero::device_thread_communicator comm(host, nullptr);
        device_vector<float> buffer(std::vector<float>(8, 1.0f));
        try {
          comm.all_reduce(buffer.data(), buffer.data(), host.rank() == 2 ? 5 : 4);
        } catch (const zero::mismatch_error& e) {
          std::lock_guard lock(m);
          errors.push_back(e.what());
          throw;
        }
      });
    } catch (const zero::mismatch_error&) {
    }
    REQUIRE(errors.size() == 3);
    CHECK(errors[0] == errors[1]);
    CHECK(errors[1] == errors[2]);
    CHECK(errors[0].find("rank 2 calls all_reduce<fp32>(count 5, sum)") != std::string::npos);
  }

#if defined(ZERO_TEST_WITH_NCCL)
  TEST_CASE("nccl_communicator with one rank: collectives on device and host memory") {
    zero::cuda::check(cudaSetDevice(0), "cudaSetDevice");
    cudaStream_t stream = nullptr;
    zero::cuda::check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
    {
      zero::nccl_communicator_options options;
      options.timeout = std::chrono::seconds(60);
      zero::nccl_communicator comm(zero::cuda::nccl_unique_id(), 0, 1, stream, options);
      CHECK(comm.rank() == 0);
      CHECK(comm.world_size() == 1);
      const std::size_t n = 4099;
      const auto input = random_vector<float>(n, 5);
      const auto input16 = random_vector<bf16>(n, 6);
      device_vector<float> send(input), recv(n), gathered(n), reduced(input);
      device_vector<bf16> reduced16(input16);
      recv.poison_all();
      gathered.poison_all();
      comm.reduce_scatter(send.data(), recv.data(), n);
      comm.all_gather(send.data(), gathered.data(), n);
      comm.all_reduce(reduced.data(), reduced.data(), n);
      comm.all_reduce(reduced16.data(), reduced16.data(), n, zero::reduce_op::max);
      comm.broadcast(send.data(), n, 0);
      auto request = comm.iall_reduce(send.data(), send.data(), n);
      request.wait();  // the compute stream waits for it
      comm.synchronize();
      CHECK(request.done());
      zero::cuda::check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
      check_bitwise(recv.download(), input, "reduce_scatter of one rank");
      check_bitwise(gathered.download(), input, "all_gather of one rank");
      check_bitwise(reduced.download(), input, "all_reduce of one rank");
      check_bitwise(reduced16.download(), input16, "bf16 max of one rank");
      check_bitwise(send.download(), input, "broadcast and iall_reduce of one rank");
      // host memory: staged and waited for
      const std::uint64_t mine[4] = {7, 8, 9, 10};
      std::uint64_t all[4] = {};
      comm.all_gather(mine, all, 4);
      CHECK(all[0] == 7);
      CHECK(all[3] == 10);
      double sums[2] = {1.5, -2.0};
      comm.all_reduce(sums, sums, 2);
      CHECK(sums[0] == 1.5);
      comm.barrier();
      const auto& t = comm.traffic();
      CHECK(t.bytes_of(zero::collective::reduce_scatter) == n * sizeof(float));
      CHECK(t.bytes_of(zero::collective::all_gather) == n * sizeof(float) + 4 * sizeof(std::uint64_t));
      CHECK(t.calls_of(zero::collective::all_reduce) == 4);
      CHECK(t.calls_of(zero::collective::barrier) == 1);
      std::vector<float> too_big(1 << 20);
      CHECK_THROWS_AS(comm.all_reduce(too_big.data(), too_big.data(), too_big.size()), zero::usage_error);
      CHECK_THROWS_AS(comm.broadcast(send.data(), n, 1), zero::usage_error);
    }
    CHECK_THROWS_AS(zero::nccl_communicator(zero::cuda::bootstrap_id{}, 1, 1, stream), zero::usage_error);
    zero::cuda::check(cudaStreamDestroy(stream), "cudaStreamDestroy");
  }

  TEST_CASE_TEMPLATE("nccl_communicator with one rank: reduce and ireduce and ibroadcast / fp32 bf16 fp16", T, float, bf16,
                     zero::fp16) {
    zero::cuda::check(cudaSetDevice(0), "cudaSetDevice");
    cudaStream_t stream = nullptr;
    zero::cuda::check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
    {
      zero::nccl_communicator_options options;
      options.timeout = std::chrono::seconds(60);
      zero::nccl_communicator comm(zero::cuda::nccl_unique_id(), 0, 1, stream, options);
      const std::size_t n = 4099;
      const auto input = random_vector<T>(n, 8);
      device_vector<T> send(input), recv(n), in_place(input), isend(input), irecv(n), scattered(n), bc(input);
      recv.poison_all();
      irecv.poison_all();
      scattered.poison_all();
      comm.reduce(send.data(), recv.data(), n, zero::reduce_op::sum, 0);
      comm.reduce(in_place.data(), in_place.data(), n, zero::reduce_op::max, 0);
      auto request = comm.ireduce(isend.data(), irecv.data(), n, zero::reduce_op::sum, 0);
      auto broadcast_request = comm.ibroadcast(bc.data(), n, 0);
      comm.reduce_scatter(send.data(), scattered.data(), n);
      request.wait();  // the compute stream waits for them
      broadcast_request.wait();
      comm.synchronize();
      CHECK(request.done());
      CHECK(broadcast_request.done());
      zero::cuda::check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
      check_bitwise(recv.download(), input, "reduce of one rank");
      check_bitwise(recv.download(), scattered.download(), "reduce against the root's slice of a reduce_scatter");
      check_bitwise(send.download(), input, "reduce's send buffer unchanged");
      check_bitwise(in_place.download(), input, "reduce (max) in place of one rank");
      check_bitwise(irecv.download(), input, "ireduce of one rank");
      check_bitwise(bc.download(), input, "ibroadcast of one rank");
      auto t = comm.traffic();
      CHECK(t.calls_of(zero::collective::reduce) == 3);
      CHECK(t.bytes_of(zero::collective::reduce) == 3 * n * sizeof(T));
      CHECK(t.calls_of(zero::collective::broadcast) == 1);
      CHECK(t.bytes_of(zero::collective::broadcast) == n * sizeof(T));
      // host memory: staged and waited for, in place and not
      const auto small = random_vector<T>(8, 9);
      std::vector<T> host_send = small, host_recv(8, poison<T>());
      comm.reduce(host_send.data(), host_recv.data(), 8, zero::reduce_op::sum, 0);
      check_bitwise(host_recv, small, "reduce of one rank on host memory");
      comm.reduce(host_send.data(), host_send.data(), 8, zero::reduce_op::sum, 0);
      check_bitwise(host_send, small, "reduce of one rank in place on host memory");
      t = comm.traffic();
      CHECK(t.calls_of(zero::collective::reduce) == 5);
      CHECK(t.bytes_of(zero::collective::reduce) == (3 * n + 16) * sizeof(T));
      // roots outside the group
      CHECK_THROWS_AS(comm.reduce(send.data(), recv.data(), n, zero::reduce_op::sum, 1), zero::usage_error);
      CHECK_THROWS_AS(comm.reduce(send.data(), recv.data(), n, zero::reduce_op::sum, -1), zero::usage_error);
      CHECK_THROWS_AS(static_cast<void>(comm.ireduce(send.data(), recv.data(), n, zero::reduce_op::sum, 1)), zero::usage_error);
      CHECK_THROWS_AS(static_cast<void>(comm.ibroadcast(bc.data(), n, 1)), zero::usage_error);
      CHECK(comm.traffic().calls_of(zero::collective::reduce) == 5);
      comm.synchronize();
    }
    zero::cuda::check(cudaStreamDestroy(stream), "cudaStreamDestroy");
  }
#endif
}
