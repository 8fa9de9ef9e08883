#pragma once
//! @file policy_checks.hpp
//! Compile-time errors that help. A policy that misses part of its concept (an update rule
//! without `prepare`, a communicator without `all_gather` for bf16, ...) makes the compiler
//! say which concept and what is missing, in one `static_assert`, instead of "constraints not
//! satisfied" or "no operand of the disjunction is satisfied". `zero::optimizer` calls these on
//! its policies; a user's own templates may call them too.
//!
//! Each check looks at the requirements in order and reports the first one missing (a
//! `static_assert` in the branch of an `if constexpr` chain that is taken), then returns
//! whether the policy satisfies its concept.

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <type_traits>

#include "zero/activation_checkpointer.hpp"
#include "zero/communicator.hpp"
#include "zero/partitioner.hpp"
#include "zero/precision.hpp"
#include "zero/types.hpp"
#include "zero/update_rule.hpp"

namespace zero {

namespace detail {
template <class...>
inline constexpr bool never = false;  // a static_assert condition that depends on the arguments
}  // namespace detail

//! Checks that `P` is a `zero::precision_bundle`.
template <class P>
consteval bool check_precision_bundle() {
  if constexpr (!precision_bundle<P>) {
    static_assert(detail::never<P>,
                  "zero::precision_bundle not satisfied: the Precision argument must be a zero::precision<Param, Grad, Master, "
                  "State, Accum, Comm> (zero::fp32_precision, zero::bf16_mixed, zero::fp16_mixed, ...)");
    return false;
  } else {
    return true;
  }
}

//! Checks that `R` is a `zero::update_rule` (element-wise or tensor-wise).
template <class R>
consteval bool check_update_rule() {
  if constexpr (!requires { typename R::hyperparameters; }) {
    static_assert(detail::never<R>,
                  "zero::update_rule not satisfied: the rule has no nested type `hyperparameters` (its run-time "
                  "hyperparameters: a default-constructible struct)");
    return false;
  } else if constexpr (!std::default_initializable<typename R::hyperparameters>) {
    static_assert(detail::never<R>, "zero::update_rule not satisfied: the rule's `hyperparameters` is not default-constructible");
    return false;
  } else if constexpr (!requires { typename R::constants; }) {
    static_assert(detail::never<R>,
                  "zero::update_rule not satisfied: the rule has no nested type `constants` (what `prepare` computes once "
                  "per step)");
    return false;
  } else if constexpr (!requires { { R::name } -> std::convertible_to<std::string_view>; }) {
    static_assert(detail::never<R>, "zero::update_rule not satisfied: the rule has no `static constexpr std::string_view name`");
    return false;
  } else if constexpr (!requires(const typename R::hyperparameters& h) {
                         { R::state_count(h) } -> std::convertible_to<std::size_t>;
                       }) {
    static_assert(detail::never<R>,
                  "zero::update_rule not satisfied: the rule has no `static std::size_t state_count(const hyperparameters&)`");
    return false;
  } else if constexpr (!requires(const typename R::hyperparameters& h) { R::validate(h); }) {
    static_assert(detail::never<R>, "zero::update_rule not satisfied: the rule has no `static void validate(const hyperparameters&)`");
    return false;
  } else if constexpr (!requires(const typename R::hyperparameters& h, std::uint64_t step) {
                         { R::prepare(h, step) } -> std::same_as<typename R::constants>;
                       }) {
    static_assert(detail::never<R>,
                  "zero::update_rule not satisfied: the rule has no `static constants prepare(const hyperparameters&, "
                  "std::uint64_t step)`");
    return false;
  } else if constexpr (!update_rule<R>) {
    static_assert(detail::never<R>,
                  "zero::update_rule not satisfied: the rule is neither element-wise (`static void update(const constants&, "
                  "float& value, float grad, zero::state_ref state)`) nor tensor-wise (`first_pass`, `tensor_factor` and "
                  "`second_pass`, see zero::tensorwise_rule)");
    return false;
  } else {
    return true;
  }
}

//! Checks that `P` is a `zero::partitioner`.
template <class P>
consteval bool check_partitioner() {
  if constexpr (!std::default_initializable<P>) {
    static_assert(detail::never<P>, "zero::partitioner not satisfied: the partitioner is not default-constructible");
    return false;
  } else if constexpr (!requires(const P& p, std::span<const std::size_t> sizes, const partition_options& o) { p.plan(sizes, o); }) {
    static_assert(detail::never<P>,
                  "zero::partitioner not satisfied: the partitioner has no `partition_plan plan(std::span<const std::size_t> "
                  "sizes, const zero::partition_options&) const`");
    return false;
  } else if constexpr (!partitioner<P>) {
    static_assert(detail::never<P>, "zero::partitioner not satisfied: the partitioner's `plan` does not return a zero::partition_plan");
    return false;
  } else {
    return true;
  }
}

namespace detail {
//! The first of a communicator's collectives that is missing for element type T, reported.
template <class C, class T>
consteval bool check_communicates() {
  if constexpr (!requires(C& c, const T* send, T* recv, std::size_t n, reduce_op op) { c.reduce_scatter(send, recv, n, op); }) {
    static_assert(never<C, T>,
                  "zero::communicator not satisfied: the communicator has no `reduce_scatter(const T* send, T* recv, std::size_t "
                  "n, zero::reduce_op)` for one of the element types T it needs (float, bf16, fp16, double, std::uint64_t: see "
                  "the T in this instantiation)");
    return false;
  } else if constexpr (!requires(C& c, const T* send, T* recv, std::size_t n) { c.all_gather(send, recv, n); }) {
    static_assert(never<C, T>,
                  "zero::communicator not satisfied: the communicator has no `all_gather(const T* send, T* recv, std::size_t n)` "
                  "for one of the element types T it needs (float, bf16, fp16, double, std::uint64_t: see the T in this "
                  "instantiation)");
    return false;
  } else if constexpr (!requires(C& c, const T* send, T* recv, std::size_t n, reduce_op op) { c.all_reduce(send, recv, n, op); }) {
    static_assert(never<C, T>,
                  "zero::communicator not satisfied: the communicator has no `all_reduce(const T* send, T* recv, std::size_t n, "
                  "zero::reduce_op)` for one of the element types T it needs (float, bf16, fp16, double, std::uint64_t: see the "
                  "T in this instantiation)");
    return false;
  } else if constexpr (!requires(C& c, T* data, std::size_t n, int root) { c.broadcast(data, n, root); }) {
    static_assert(never<C, T>,
                  "zero::communicator not satisfied: the communicator has no `broadcast(T* data, std::size_t n, int root)` for "
                  "one of the element types T it needs (float, bf16, fp16, double, std::uint64_t: see the T in this "
                  "instantiation)");
    return false;
  } else {
    return true;
  }
}
}  // namespace detail

//! Checks that `C` is a `zero::communicator`.
template <class C>
consteval bool check_communicator() {
  if constexpr (!requires(const C& c) { { c.rank() } -> std::convertible_to<int>; }) {
    static_assert(detail::never<C>, "zero::communicator not satisfied: the communicator has no `int rank() const`");
    return false;
  } else if constexpr (!requires(const C& c) { { c.world_size() } -> std::convertible_to<int>; }) {
    static_assert(detail::never<C>, "zero::communicator not satisfied: the communicator has no `int world_size() const`");
    return false;
  } else if constexpr (!requires(const C& c) { { c.traffic() } -> std::convertible_to<traffic_counters>; }) {
    static_assert(detail::never<C>,
                  "zero::communicator not satisfied: the communicator has no `zero::traffic_counters traffic() const` (the "
                  "bytes it moved)");
    return false;
  } else if constexpr (!requires(C& c) { c.barrier(); }) {
    static_assert(detail::never<C>, "zero::communicator not satisfied: the communicator has no `void barrier()`");
    return false;
  } else if constexpr (!(detail::check_communicates<C, float>() && detail::check_communicates<C, bf16>() &&
                         detail::check_communicates<C, fp16>() && detail::check_communicates<C, double>() &&
                         detail::check_communicates<C, std::uint64_t>())) {
    return false;
  } else {
    return communicator<C>;
  }
}

//! Checks that `K` is a `zero::activation_checkpointer`.
template <class K>
consteval bool check_activation_checkpointer() {
  if constexpr (!requires(K& k, checkpoint_id id, raw_span<const std::byte> data, generator_state rng) { k.save(id, data, rng); }) {
    static_assert(detail::never<K>,
                  "zero::activation_checkpointer not satisfied: the checkpointer has no `save(zero::checkpoint_id, "
                  "zero::raw_span<const std::byte> data, zero::generator_state)`");
    return false;
  } else if constexpr (!requires(K& k, checkpoint_id id, raw_span<std::byte> out) {
                         { k.restore(id, out) } -> std::same_as<generator_state>;
                       }) {
    static_assert(detail::never<K>,
                  "zero::activation_checkpointer not satisfied: the checkpointer has no `zero::generator_state "
                  "restore(zero::checkpoint_id, zero::raw_span<std::byte> out)`");
    return false;
  } else if constexpr (!requires(K& k, checkpoint_id id) { k.release(id); }) {
    static_assert(detail::never<K>,
                  "zero::activation_checkpointer not satisfied: the checkpointer has no `release(zero::checkpoint_id)`");
    return false;
  } else if constexpr (!requires(const K& k) {
                         { k.bytes_held() } -> std::convertible_to<std::size_t>;
                         { k.peak_bytes_held() } -> std::convertible_to<std::size_t>;
                       }) {
    static_assert(detail::never<K>,
                  "zero::activation_checkpointer not satisfied: the checkpointer has no `std::size_t bytes_held() const` and "
                  "`std::size_t peak_bytes_held() const`");
    return false;
  } else {
    return activation_checkpointer<K>;
  }
}

}  // namespace zero
