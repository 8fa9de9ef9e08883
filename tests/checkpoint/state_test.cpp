// State in memory: save_state / load_state, the rank-file format as bytes or through a stream,
// for frameworks that write their own checkpoints. Same world size from each rank's own bytes;
// another world size, partitioner and stage from every rank's bytes; and every refusal
// (a flipped byte, a truncated buffer, ranks given different saves, a rank's shard missing)
// leaves the optimizer unchanged on every rank.
#include "fixture.hpp"

#include <sstream>

namespace {

using blob = std::vector<std::byte>;

// The fixture's exact gradients (global batch 120, a fixed loss scale of 1/world): the same
// trajectory at every world size, bit for bit.
template <class Opt>
typename Opt::options_type exact_options(int world) {
  typename Opt::options_type o;
  o.layout.bucket_elements = 64;
  o.layout.alignment = 4;
  o.loss_scale.kind = zero::loss_scale_options::mode::fixed;
  o.loss_scale.fixed_scale = 1.0 / world;
  return o;
}

template <class Opt>
void train(Opt& opt, int rank, int world, int first, int last) {
  std::vector<std::vector<typename Opt::grad_type>> grads(ckpt::model_sizes.size());
  for (int t = first; t < last; ++t) {
    for (std::size_t q = ckpt::model_sizes.size(); q-- > 0;) {
      grads[q].resize(ckpt::model_sizes[q]);
      for (std::size_t i = 0; i < grads[q].size(); ++i) grads[q][i] = typename Opt::grad_type(ckpt::rank_gradient(t, rank, world, q, i));
      opt.gradient_ready(q, {grads[q].data(), grads[q].size()});
    }
    opt.step();
  }
}

// On `world` thread ranks: builds an optimizer, calls body(opt, rank), snapshots before and after.
template <class Opt, class Body>
std::pair<ckpt::snapshot, ckpt::snapshot> on_ranks(int world, Body&& body) {
  std::pair<ckpt::snapshot, ckpt::snapshot> out;
  std::mutex lock;
  zero::thread_group group(world, {std::chrono::seconds(60)});
  group.run([&](zero::thread_communicator& comm) {
    std::vector<std::vector<typename Opt::param_type>> storage(ckpt::model_sizes.size());
    std::vector<zero::parameter<typename Opt::param_type>> params;
    for (std::size_t p = 0; p < ckpt::model_sizes.size(); ++p) {
      for (std::size_t i = 0; i < ckpt::model_sizes[p]; ++i) storage[p].push_back(typename Opt::param_type(ckpt::initial_value(p, i)));
      params.push_back({"layer" + std::to_string(p), {storage[p].data(), storage[p].size()}});
    }
    Opt opt(comm, params, exact_options<Opt>(world));
    ckpt::take_snapshot(opt, out.first, lock);
    body(opt, comm.rank());
    ckpt::take_snapshot(opt, out.second, lock);
  });
  return out;
}

using S2 = zero::optimizer<zero::stage2, zero::fp32_precision, zero::adamw, zero::bucketed_partitioner>;
using S1 = zero::optimizer<zero::stage1, zero::fp32_precision, zero::adamw, zero::contiguous_partitioner>;
using S0 = zero::optimizer<zero::stage0, zero::fp32_precision, zero::adamw, zero::bucketed_partitioner>;

}  // namespace

TEST_SUITE("checkpoint") {
  TEST_CASE("state in memory: each rank's own bytes load at the same world size and training goes on bitwise") {
    std::vector<blob> saved(3);
    const auto before = on_ranks<S2>(3, [&](S2& opt, int rank) {
      train(opt, rank, 3, 0, 3);
      saved[static_cast<std::size_t>(rank)] = zero::save_state(opt);
    });
    // the bytes are a rank file: the same header a file would have, one save id on every rank
    const auto h1 = zero::detail::read_file(saved[1], "rank 1").header();
    CHECK(h1.rank == 1);
    CHECK(h1.world_size == 3);
    CHECK(h1.step == 3);
    CHECK(zero::expected_file_size(h1) == saved[1].size());
    CHECK(zero::detail::read_file(saved[2], "rank 2").header().save_id == h1.save_id);
    const auto after = on_ranks<S2>(3, [&](S2& opt, int rank) {
      const auto info = zero::load_state(opt, std::span<const std::byte>(saved[static_cast<std::size_t>(rank)]));
      CHECK(info.step == 3);
      CHECK(info.saved_world_size == 3);
      CHECK(opt.step_count() == 3);
    });
    ckpt::check_same(before.second, after.second);
    // trained on from the loaded state: as a run that never stopped
    const auto whole = on_ranks<S2>(3, [&](S2& opt, int rank) { train(opt, rank, 3, 0, 7); });
    const auto resumed = on_ranks<S2>(3, [&](S2& opt, int rank) {
      zero::load_state(opt, std::span<const std::byte>(saved[static_cast<std::size_t>(rank)]));
      train(opt, rank, 3, 3, 7);
    });
    ckpt::check_same(whole.second, resumed.second);
  }

  TEST_CASE("state in memory: every rank's bytes reshard to another world size and partitioner and stage and load through streams") {
    std::vector<blob> saved(3);
    std::vector<std::string> streamed(3);
    const auto before = on_ranks<S2>(3, [&](S2& opt, int rank) {
      train(opt, rank, 3, 0, 3);
      saved[static_cast<std::size_t>(rank)] = zero::save_state(opt);
      std::ostringstream out;
      zero::save_state(opt, out);
      streamed[static_cast<std::size_t>(rank)] = out.str();
    });
    const std::vector<std::span<const std::byte>> all = {saved[2], saved[0], saved[1]};  // any order
    for (int world : {2, 5}) {
      CAPTURE(world);
      const auto s1 = on_ranks<S1>(world, [&](S1& opt, int) { zero::load_state(opt, std::span<const std::span<const std::byte>>(all)); });
      ckpt::check_same(before.second, s1.second);
    }
    const auto s0 = on_ranks<S0>(2, [&](S0& opt, int) { zero::load_state(opt, std::span<const std::span<const std::byte>>(all)); });
    ckpt::check_same(before.second, s0.second);
    // a stream carries the same format: it loads like the bytes
    const auto from_stream = on_ranks<S2>(3, [&](S2& opt, int rank) {
      std::istringstream in(streamed[static_cast<std::size_t>(rank)]);
      zero::load_state(opt, in);
    });
    ckpt::check_same(before.second, from_stream.second);
  }

  TEST_CASE("state in memory: refusals name what is wrong on every rank alike and leave the optimizer unchanged") {
    std::vector<blob> saved(3), other(3);
    on_ranks<S2>(3, [&](S2& opt, int rank) {
      train(opt, rank, 3, 0, 2);
      other[static_cast<std::size_t>(rank)] = zero::save_state(opt);
      train(opt, rank, 3, 2, 3);
      saved[static_cast<std::size_t>(rank)] = zero::save_state(opt);
    });
    // every case: rank r is given bytes(r); all ranks must throw the message, nothing changes
    auto refused = [&](auto&& bytes_of, const std::string& message) {
      CAPTURE(message);
      std::vector<std::string> errors(3);
      const auto r = on_ranks<S2>(3, [&](S2& opt, int rank) {
        train(opt, rank, 3, 0, 1);
        ckpt::snapshot mine;
        try {
          const blob b = bytes_of(rank);
          zero::load_state(opt, std::span<const std::byte>(b));
        } catch (const zero::checkpoint_error& e) {
          errors[static_cast<std::size_t>(rank)] = e.what();
        }
      });
      for (const auto& e : errors) {
        CHECK(e.find(message) != std::string::npos);
        CHECK(e == errors[0]);
      }
      // unchanged: as if nothing had been loaded (one step from the start on every rank)
      const auto one_step = on_ranks<S2>(3, [&](S2& opt, int rank) { train(opt, rank, 3, 0, 1); });
      ckpt::check_same(one_step.second, r.second);
    };
    refused([&](int rank) {
      blob b = saved[static_cast<std::size_t>(rank)];
      if (rank == 1) b[b.size() - 5] ^= std::byte{0x10};  // a flipped bit in the last section
      return b;
    }, "the in-memory state of rank 1: section 'state.1': checksum mismatch");
    refused([&](int rank) {
      blob b = saved[static_cast<std::size_t>(rank)];
      if (rank == 2) b.erase(b.end() - 100, b.end());  // (not resize: GCC 12 at -O1 warns of a huge memset)
      return b;
    }, "bytes; its sections end at byte");
    refused([&](int rank) { return rank == 0 ? other[0] : saved[static_cast<std::size_t>(rank)]; },
            "ranks given different saves");
    refused([&](int rank) { return saved[static_cast<std::size_t>((rank + 1) % 3)]; }, "needs the state saved by rank");
    // another world size from one rank's own bytes: the other shards are needed
    std::vector<std::string> errors(2);
    on_ranks<S2>(2, [&](S2& opt, int rank) {
      try {
        zero::load_state(opt, std::span<const std::byte>(saved[static_cast<std::size_t>(rank)]));
      } catch (const zero::checkpoint_error& e) {
        errors[static_cast<std::size_t>(rank)] = e.what();
      }
    });
    for (const auto& e : errors) CHECK(e.find("give load_state every saved rank's bytes") != std::string::npos);
  }
}
