#pragma once
//! @file precision.hpp
//! The precision bundle (which element type each buffer uses, fixed at compile time) and the
//! ZeRO stage.

#include <type_traits>

#include "zero/types.hpp"

namespace zero {

//! Names, at compile time, the element type of every buffer of a training step.
//! @tparam Param  the model-precision parameters the framework owns and computes with
//! @tparam Grad   the gradients the framework produces
//! @tparam Master the master weights the update runs on; `void` means none: the update runs on
//!                the parameters themselves (fp32 training, or bf16 without a master copy)
//! @tparam State  the optimizer state (moments)
//! @tparam Accum  where gradients are accumulated and held for the update (the gradient shard)
//! @tparam Comm   the element type gradients are reduced in across ranks
template <element_type Param, element_type Grad = Param, class Master = float, element_type State = float,
          element_type Accum = float, element_type Comm = Accum>
struct precision {
  static_assert(std::is_void_v<Master> || element_type<Master>,
                "zero::precision: Master must be an element type (fp32, bf16, fp16, double) or void for none");
  static_assert(std::is_same_v<State, float>, "zero::precision: optimizer state is kept in fp32");
  static_assert(std::is_same_v<Accum, float> || std::is_same_v<Accum, bf16>,
                "zero::precision: gradients accumulate in fp32 or bf16");

  using param_type = Param;
  using grad_type = Grad;
  using master_type = Master;
  using state_type = State;
  using accum_type = Accum;
  using comm_type = Comm;

  //! Whether a separate master copy exists.
  static constexpr bool has_master = !std::is_void_v<Master>;
  //! The type the update reads and writes: the master copy if there is one, else the parameters.
  using value_type = std::conditional_t<has_master, Master, Param>;
};

//! fp32 everywhere; no separate master copy (the parameters are the master weights).
using fp32_precision = precision<float, float, void, float, float, float>;
//! bf16 parameters and gradients, fp32 master weights, state, accumulation and reduction.
using bf16_mixed = precision<bf16, bf16, float, float, float, float>;
//! bf16 parameters and gradients reduced in bf16, fp32 master weights, state and accumulation.
using bf16_mixed_bf16_comm = precision<bf16, bf16, float, float, float, bf16>;
//! fp16 parameters and gradients, fp32 master weights, state, accumulation and reduction.
//! Loss scaling is dynamic by default.
using fp16_mixed = precision<fp16, fp16, float, float, float, float>;
//! bf16 parameters and no master copy: the update runs in fp32 and is rounded to bf16 (use
//! `rounding::stochastic` so that updates below half a bf16 ulp still move the parameters).
using bf16_pure = precision<bf16, bf16, void, float, float, float>;
//! bf16 parameters with fp32 master weights, gradients accumulated in bf16 (DeepSpeed's bf16
//! accumulation: half the gradient memory, less precise).
using bf16_mixed_bf16_accum = precision<bf16, bf16, float, float, bf16, float>;

template <class T>
inline constexpr bool is_precision_v = false;
template <class P, class G, class M, class S, class A, class C>
inline constexpr bool is_precision_v<precision<P, G, M, S, A, C>> = true;

//! A precision bundle: an instance of `zero::precision`.
template <class T>
concept precision_bundle = is_precision_v<T>;

//! What ZeRO partitions across the data-parallel ranks.
enum class stage : int {
  stage0 = 0,  //!< nothing: plain data parallelism (gradients all-reduced, every rank updates all)
  stage1 = 1,  //!< optimizer state and master weights (P_os)
  stage2 = 2,  //!< optimizer state, master weights and gradients (P_os+g)
  //! the parameters too (P_os+g+p): each rank keeps 1/N of everything, and the framework has a
  //! group of parameters gathered only while it computes with it (`optimizer::gather`)
  stage3 = 3,
};
inline constexpr stage stage0 = stage::stage0;
inline constexpr stage stage1 = stage::stage1;
inline constexpr stage stage2 = stage::stage2;
inline constexpr stage stage3 = stage::stage3;

}  // namespace zero
