// zero::libtorch::data_parallel against torch's own optimizer: a torch::nn model trained on one
// process by torch::optim::AdamW (libtorch's port of torch.optim.AdamW) on the global batch, and
// by zero on 2 and 3 thread ranks, each rank on its slice of the batch, with its gradients
// reported from autograd's hooks. Stages 0, 1 and 2, both partitioners, fp32, two parameter
// groups (no weight decay for vectors), a learning-rate schedule and gradient clipping.
//
// Checked: every rank ends bitwise equal to every other; each tensor's largest difference from
// torch's, over the tensor's largest magnitude, is at most 1e-6 (both are fp32 computations of
// the same training; the difference comes from the order of the gradient sums and of the
// update's operations). A double-precision run of torch's own optimizer gives the exact
// training: zero must be no farther from it than twice torch's own fp32 run is (over 200 steps
// both are about 1.3e-6 from it, which is why 1e-6 against torch is as tight as is meaningful).

#include "torch_training.hpp"

namespace {

using namespace libtorch_test;

// zero on `world` thread ranks: every rank's final values.
template <class Engine>
std::vector<std::vector<torch::Tensor>> train_with_zero(const recipe& r, int world, zero::libtorch::gradient_release release,
                                                        zero::unreported_gradients unreported = zero::unreported_gradients::zero,
                                                        std::size_t* peak_held = nullptr) {
  const auto init = initial_values(r.with_aux);
  std::vector<std::vector<torch::Tensor>> finals(static_cast<std::size_t>(world));
  std::vector<std::size_t> peaks(static_cast<std::size_t>(world));
  zero::thread_group group(world, {std::chrono::seconds(60)});
  group.run([&](zero::thread_communicator& comm) {
    auto [values, peak] = train_rank<Engine>(comm, r, init, release, unreported);
    finals[static_cast<std::size_t>(comm.rank())] = std::move(values);
    peaks[static_cast<std::size_t>(comm.rank())] = peak;
  });
  if (peak_held) *peak_held = peaks[0];
  return finals;
}


template <class Engine>
void check_against_torch(const char* what, const recipe& r = {},
                         zero::libtorch::gradient_release release = zero::libtorch::gradient_release::free,
                         zero::unreported_gradients unreported = zero::unreported_gradients::zero) {
  torch::set_num_threads(1);
  const auto reference = train_with_torch(r, torch::kFloat);
  const auto exact = train_with_torch(r, torch::kDouble);
  const double torch_error = worst_relative_error(reference, exact);
  for (const int world : {2, 3}) {
    CAPTURE(world);
    const auto finals = train_with_zero<Engine>(r, world, release, unreported);
    for (int rank = 1; rank < world; ++rank) {
      CAPTURE(rank);
      CHECK(bitwise_equal(finals[static_cast<std::size_t>(rank)], finals[0]));
    }
    const double error = worst_relative_error(finals[0], reference);
    const double zero_exact = worst_relative_error(finals[0], exact);
    std::printf("%s, world %d: against torch fp32 %.3g, against fp64 %.3g (torch fp32 against fp64 %.3g); %zu of %zu tensors bitwise torch's\n",
                what, world, error, zero_exact, torch_error, equal_tensors(finals[0], reference), reference.size());
    CHECK(error <= 1e-6);
    CHECK(zero_exact <= 2 * torch_error);  // no farther from the exact training than torch's own fp32 run
    CHECK(error > 0.0);  // zero's sums run in another order: equal bits would mean the comparison compared nothing
  }
}

template <zero::stage S, class Partitioner>
using fp32_engine = zero::optimizer<S, zero::fp32_precision, zero::adamw, Partitioner>;

}  // namespace

TEST_SUITE("libtorch") {
  TEST_CASE("libtorch.adamw_stage0_contiguous") { check_against_torch<fp32_engine<zero::stage0, zero::contiguous_partitioner>>("stage 0 contiguous"); }
  TEST_CASE("libtorch.adamw_stage1_contiguous") { check_against_torch<fp32_engine<zero::stage1, zero::contiguous_partitioner>>("stage 1 contiguous"); }
  TEST_CASE("libtorch.adamw_stage2_contiguous") { check_against_torch<fp32_engine<zero::stage2, zero::contiguous_partitioner>>("stage 2 contiguous"); }
  TEST_CASE("libtorch.adamw_stage0_bucketed") { check_against_torch<fp32_engine<zero::stage0, zero::bucketed_partitioner>>("stage 0 bucketed"); }
  TEST_CASE("libtorch.adamw_stage1_bucketed") { check_against_torch<fp32_engine<zero::stage1, zero::bucketed_partitioner>>("stage 1 bucketed"); }
  TEST_CASE("libtorch.adamw_stage2_bucketed") { check_against_torch<fp32_engine<zero::stage2, zero::bucketed_partitioner>>("stage 2 bucketed"); }

  TEST_CASE("libtorch.stage2_gradient_accumulation_zero_in_place") {
    check_against_torch<fp32_engine<zero::stage2, zero::bucketed_partitioner>>("stage 2, 2 micro-steps, zeroed in place", {.micro_steps = 2},
                                                                              zero::libtorch::gradient_release::zero_in_place);
  }

  // the layout order autograd really produces, learned in the first micro-step
  TEST_CASE("libtorch.stage2_learned_order") {
    check_against_torch<fp32_engine<zero::stage2, zero::bucketed_partitioner>>("stage 2, learned order", {.order = zero::gradient_order::learned});
  }

  // A head used on even steps only: torch.optim skips a parameter whose grad is None, and so does
  // the engine under unreported_gradients::skip (its own step count drives its bias corrections).
  TEST_CASE("libtorch.unused_parameters_skipped_as_torch_does") {
    check_against_torch<fp32_engine<zero::stage2, zero::contiguous_partitioner>>("stage 2, head used every other step", {.with_aux = true},
                                                                                 zero::libtorch::gradient_release::free,
                                                                                 zero::unreported_gradients::skip);
  }

  // The same head under the default (unreported_gradients::zero): updated with a zero gradient
  // (weight decay and the moments' decay apply), as torch does when zero_grad keeps zeros.
  TEST_CASE("libtorch.unused_parameters_zero_as_deepspeed_does") {
    check_against_torch<fp32_engine<zero::stage2, zero::bucketed_partitioner>>("stage 2, head used every other step, zero gradients",
                                                                              {.with_aux = true, .grads_to_none = false});
  }

  // With replica_start::check, replicas that do not start alike are refused on every rank, naming
  // the parameter and the rank, before any hook is installed.
  TEST_CASE("libtorch.replicas_that_differ_refused") {
    torch::set_num_threads(1);
    const auto init = initial_values(false);
    std::vector<std::string> messages(3);
    zero::thread_group group(3, {std::chrono::seconds(60)});
    group.run([&](zero::thread_communicator& comm) {
      Net net = make_net({}, init, torch::kFloat);
      if (comm.rank() == 2) {
        torch::NoGradGuard no_grad;
        net->norm->bias[17] += 1e-6f;  // one value, barely
      }
      using engine = fp32_engine<zero::stage2, zero::bucketed_partitioner>;
      try {
        zero::libtorch::data_parallel<engine> dp(*net, comm, {}, {}, {.start = zero::libtorch::replica_start::check});
      } catch (const zero::mismatch_error& e) {
        messages[static_cast<std::size_t>(comm.rank())] = e.what();
      }
      torch::nn::functional::cross_entropy(net->forward(batch_of(0).x, false), batch_of(0).y).backward();  // no hook left
      CHECK(net->norm->bias.grad().defined());
    });
    for (const auto& m : messages) {
      CAPTURE(m);
      CHECK(m.find("parameter 'norm.bias' holds other values on rank 2 than on rank 0") != std::string::npos);
    }
  }

  // By default every rank starts from rank 0's values (DDP's broadcast), whatever its own were.
  TEST_CASE("libtorch.replicas_start_from_rank0") {
    torch::set_num_threads(1);
    const auto init = initial_values(false);
    std::vector<std::vector<torch::Tensor>> started(3);
    zero::thread_group group(3, {std::chrono::seconds(60)});
    group.run([&](zero::thread_communicator& comm) {
      Net net = make_net({}, init, torch::kFloat);
      {
        torch::NoGradGuard no_grad;
        for (auto& p : net->parameters()) p.add_(0.5f * static_cast<float>(comm.rank()));  // every rank its own values
      }
      zero::libtorch::data_parallel<fp32_engine<zero::stage2, zero::bucketed_partitioner>> dp(*net, comm);
      started[static_cast<std::size_t>(comm.rank())] = snapshot(net);
    });
    Net rank0 = make_net({}, init, torch::kFloat);  // rank 0 added 0.5 x 0
    CHECK(bitwise_equal(started[0], snapshot(rank0)));
    CHECK(bitwise_equal(started[1], started[0]));
    CHECK(bitwise_equal(started[2], started[0]));
  }

  // A module refused on one rank only is an error on every rank (the others name that rank),
  // not a hang in a collective the refusing rank never joins.
  TEST_CASE("libtorch.refusal_on_one_rank_fails_every_rank") {
    torch::set_num_threads(1);
    std::vector<std::string> messages(3);
    zero::thread_group group(3, {std::chrono::seconds(60)});
    group.run([&](zero::thread_communicator& comm) {
      Net net(false);
      if (comm.rank() == 1) net->to(torch::kDouble);
      try {
        zero::libtorch::data_parallel<fp32_engine<zero::stage2, zero::bucketed_partitioner>> dp(*net, comm);
      } catch (const zero::usage_error& e) {
        messages[static_cast<std::size_t>(comm.rank())] = e.what();
      }
    });
    CHECK(messages[1].find("parameter 'embed.weight' (rank 1) is Double") != std::string::npos);
    CHECK(messages[0].find("rank(s) 1 refused their parameters") != std::string::npos);
    CHECK(messages[2].find("rank(s) 1 refused their parameters") != std::string::npos);
  }

  // Modules with other parameters on one rank: every rank throws the same mismatch_error
  // naming it, before any broadcast of mismatched sizes.
  TEST_CASE("libtorch.other_module_on_one_rank_refused") {
    torch::set_num_threads(1);
    std::vector<std::string> messages(3);
    zero::thread_group group(3, {std::chrono::seconds(60)});
    group.run([&](zero::thread_communicator& comm) {
      Net net(comm.rank() == 2);  // rank 2 has the auxiliary head as well
      try {
        zero::libtorch::data_parallel<fp32_engine<zero::stage2, zero::bucketed_partitioner>> dp(*net, comm);
      } catch (const zero::mismatch_error& e) {
        messages[static_cast<std::size_t>(comm.rank())] = e.what();
      }
    });
    for (const auto& m : messages) {
      CAPTURE(m);
      CHECK(m.find("rank(s) 2 registered a module with other parameters") != std::string::npos);
    }
  }

  // A parameter that is not one dense contiguous span is refused with its name.
  TEST_CASE("libtorch.non_contiguous_parameter_refused") {
    Net net(false);
    net->register_parameter("transposed", torch::zeros({3, 5}).t());
    zero::single_rank_communicator comm;
    using engine = zero::optimizer<zero::stage2, zero::fp32_precision, zero::adamw, zero::contiguous_partitioner, zero::single_rank_communicator>;
    CHECK_THROWS_WITH_AS((zero::libtorch::data_parallel<engine>(*net, comm)),
                         doctest::Contains("parameter 'transposed' (rank 0) is not a dense contiguous tensor"), zero::usage_error);
  }

  // Stage 2 with small units frees gradients while backward still runs: at no point does the
  // framework hold every gradient.
  TEST_CASE("libtorch.stage2_frees_gradients_during_backward") {
    torch::set_num_threads(1);
    std::size_t peak = 0;
    train_with_zero<fp32_engine<zero::stage2, zero::bucketed_partitioner>>({}, 2, zero::libtorch::gradient_release::free,
                                                                          zero::unreported_gradients::zero, &peak);
    const std::size_t tensors = Net(false)->parameters().size();
    CAPTURE(tensors);
    CHECK(peak >= 1);
    CHECK(peak < tensors);
  }

  // At one rank with layout.read_gradients_in_update, the update reads the .grad tensors torch
  // left (held, all of them, until step() returns): bitwise the run that copies them during
  // backward, and as near torch as the other runs.
  TEST_CASE("libtorch.one_rank_update_reads_torch_gradients") {
    using engine = fp32_engine<zero::stage2, zero::bucketed_partitioner>;
    torch::set_num_threads(1);
    const auto reference = train_with_torch({}, torch::kFloat);
    std::size_t copied_peak = 0, read_peak = 0;
    const auto copied = train_with_zero<engine>({}, 1, zero::libtorch::gradient_release::free, zero::unreported_gradients::zero, &copied_peak);
    const auto read = train_with_zero<engine>({.read_in_update = true}, 1, zero::libtorch::gradient_release::free,
                                              zero::unreported_gradients::zero, &read_peak);
    const std::size_t tensors = Net(false)->parameters().size();
    CHECK(bitwise_equal(read[0], copied[0]));
    CHECK(worst_relative_error(read[0], reference) <= 1e-6);
    CHECK(copied_peak < tensors);  // copied while backward runs, freed at once
    CHECK(read_peak == tensors);   // held until the step
  }

  // Saved at 2 ranks after 120 steps: resumed at 2 ranks it continues bitwise as if never
  // stopped; resumed at 3 ranks (the shards cut anew) it still ends within fp32 noise of torch.
  TEST_CASE("libtorch.checkpoint_resumed_at_another_world_size") {
    torch::set_num_threads(1);
    using engine = fp32_engine<zero::stage2, zero::bucketed_partitioner>;
    const auto free = zero::libtorch::gradient_release::free;
    const auto dir = std::filesystem::temp_directory_path() / ("zero_libtorch_ckpt_" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir);
    const auto whole = train_with_zero<engine>({}, 2, free);
    train_with_zero<engine>({.last_step = 120, .save = dir.string()}, 2, free);
    const auto resumed = train_with_zero<engine>({.first_step = 120, .load = dir.string()}, 2, free);
    CHECK(bitwise_equal(resumed[0], whole[0]));
    CHECK(bitwise_equal(resumed[1], whole[0]));
    const auto resharded = train_with_zero<engine>({.first_step = 120, .load = dir.string()}, 3, free);
    CHECK(bitwise_equal(resharded[1], resharded[0]));
    CHECK(bitwise_equal(resharded[2], resharded[0]));
    const double error = worst_relative_error(resharded[0], train_with_torch({}, torch::kFloat));
    std::printf("saved at 2 ranks, resumed at 3: against torch fp32 %.3g\n", error);
    CHECK(error <= 1e-6);
    std::filesystem::remove_all(dir);
  }

  // A tensor registered under two names (a tied weight) is one parameter, reported once: autograd
  // sums its uses before it accumulates.
  TEST_CASE("libtorch.tied_weight_registered_once") {
    torch::set_num_threads(1);
    Net net(false);
    net->register_parameter("tied_fc2_weight", net->fc2->weight);
    REQUIRE(net->named_parameters().size() == 8);
    zero::single_rank_communicator comm;
    using engine = zero::optimizer<zero::stage2, zero::fp32_precision, zero::sgd, zero::contiguous_partitioner, zero::single_rank_communicator>;
    typename engine::options_type o;
    o.hyperparameters.lr = 0.5;
    const auto data = batch_of(0);
    torch::nn::functional::cross_entropy(net->forward(data.x, false), data.y).backward();  // torch alone
    const auto grad = net->fc2->weight.grad().detach().clone();
    net->zero_grad();
    const auto before = net->fc2->weight.detach().clone();
    zero::libtorch::data_parallel<engine> dp(*net, comm, o);
    CHECK(dp.size() == 7);
    CHECK(dp.name(0) == "tied_fc2_weight");  // the module's own parameters come before its children's
    for (std::size_t i = 1; i < dp.size(); ++i) CHECK(dp.name(i) != "fc2.weight");
    torch::nn::functional::cross_entropy(net->forward(data.x, false), data.y).backward();
    dp.step();
    CHECK(torch::allclose(net->fc2->weight, before - 0.5 * grad));
  }

  TEST_CASE("libtorch.wrong_dtype_refused") {
    Net net(false);  // fp32
    zero::single_rank_communicator comm;
    using bf16_engine = zero::optimizer<zero::stage2, zero::bf16_mixed, zero::adamw, zero::contiguous_partitioner, zero::single_rank_communicator>;
    CHECK_THROWS_WITH_AS((zero::libtorch::data_parallel<bf16_engine>(*net, comm)),
                         doctest::Contains("parameter 'embed.weight' (rank 0) is Float but the engine's parameters are BFloat16"),
                         zero::usage_error);
    // nothing was hooked: a plain backward still works
    auto loss = net->forward(torch::zeros({2, context}, torch::kLong), false).sum();
    loss.backward();
    CHECK(net->parameters()[0].grad().defined());
  }

  TEST_CASE("libtorch.second_backward_in_a_micro_step_refused") {
    Net net(false);
    zero::single_rank_communicator comm;
    using engine = zero::optimizer<zero::stage2, zero::fp32_precision, zero::adamw, zero::contiguous_partitioner, zero::single_rank_communicator>;
    typename engine::options_type o;
    o.layout.bucket_elements = 1u << 20;  // one unit: nothing is released before the step
    zero::libtorch::data_parallel<engine> dp(*net, comm, o);
    const auto x = torch::zeros({2, context}, torch::kLong);
    net->forward(x, false).sum().backward();
    // refused by the adapter (the first gradient still held) or by the engine (already read and
    // released): either way an error naming the parameter, never a gradient counted twice
    std::string message;
    try {
      net->forward(x, false).sum().backward();
    } catch (const std::exception& e) {
      message = e.what();
    }
    CAPTURE(message);
    CHECK(message.find("'fc2.bias'") != std::string::npos);
    CHECK(message.find("micro-step") != std::string::npos);
  }
}
