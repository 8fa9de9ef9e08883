#pragma once
//! @file engine/registration.hpp
//! What a rank checks of its own registration before the ranks agree on it
//! (`rank_agreement.hpp`): the parameters it registers and the layout it asks for. Every refusal
//! is a `usage_error` naming the parameter or option, the value and the rank; nothing the
//! caller gave is touched.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "zero/engine/rank_agreement.hpp"
#include "zero/error.hpp"
#include "zero/memory.hpp"

namespace zero::engine {

//! Checks the parameters a rank registers (each a `zero::parameter`: a name, a non-null,
//! non-empty span of values that overlaps no other parameter's, and at least one report a
//! micro-step) and returns their names. `values_optional` (stage 3): a parameter may come
//! without values (a null pointer, its size alone).
template <class Parameter>
std::vector<std::string> check_parameters(std::span<const Parameter> params, int rank, bool values_optional = false) {
  const std::string where = " on rank " + std::to_string(rank);
  std::vector<std::string> names;
  names.reserve(params.size());
  for (const auto& p : params) names.push_back(p.name);
  if (params.empty()) throw usage_error("zero: no parameters registered" + where);
  for (std::size_t i = 0; i < params.size(); ++i) {
    const auto& p = params[i];
    const std::string which = "zero: parameter " + describe_parameter(names, i) + where;
    if (p.values.data == nullptr && !values_optional)
      throw usage_error(which + " has a null values pointer (only stage 3 registers parameters without values)");
    if (p.values.size == 0) throw usage_error(which + " has zero elements");
    if (p.reports < 1) throw usage_error(which + " expects 0 gradient reports per step; use >= 1");
  }
  std::vector<std::size_t> order;  // the parameters with values: none may overlap another
  for (std::size_t i = 0; i < params.size(); ++i)
    if (params[i].values.data != nullptr) order.push_back(i);
  auto begin_of = [&](std::size_t i) { return reinterpret_cast<std::uintptr_t>(params[i].values.data); };
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return begin_of(a) < begin_of(b); });
  for (std::size_t k = 1; k < order.size(); ++k) {
    const std::size_t a = order[k - 1], b = order[k];
    if (begin_of(a) + params[a].values.size_bytes() > begin_of(b))
      throw usage_error("zero: parameters " + describe_parameter(names, a) + " and " + describe_parameter(names, b) + where +
                        " overlap in memory");
  }
  return names;
}

//! Checks the layout options against the registered parameters (`names`) and the communicator
//! (`nonblocking`: whether it can start collectives; `communicator`: its name, for the message).
inline void check_layout(const layout_options& layout, std::span<const std::string> names, int rank, bool nonblocking,
                         const char* communicator) {
  const std::string where = " on rank " + std::to_string(rank);
  if (layout.staging_buffers < 1) throw usage_error("zero: layout.staging_buffers is 0" + where + "; use >= 1");
  if (layout.staging_buffers > 1 && !nonblocking)
    throw usage_error("zero: layout.staging_buffers = " + std::to_string(layout.staging_buffers) + where +
                      " needs a communicator with non-blocking collectives (zero::nonblocking_communicator); " +
                      communicator + " has none: use 1");
  if (layout.copy_on_report && layout.gradient_slots)
    throw usage_error("zero: layout.copy_on_report and layout.gradient_slots" + where +
                      ": gradients in slots are engine memory already; use one of them");
  if (layout.order != gradient_order::given) {
    if (!layout.given_order.empty())
      throw usage_error("zero: layout.given_order is set" + where + " but layout.order is not gradient_order::given");
    return;
  }
  if (layout.given_order.size() != names.size())
    throw usage_error("zero: layout.given_order" + where + " names " + std::to_string(layout.given_order.size()) +
                      " parameters; " + std::to_string(names.size()) + " are registered");
  std::vector<bool> seen(names.size(), false);
  for (std::size_t i = 0; i < layout.given_order.size(); ++i) {
    const std::size_t p = layout.given_order[i];
    if (p >= names.size())
      throw usage_error("zero: layout.given_order" + where + " names parameter #" + std::to_string(p) +
                        ", which is not registered, at position " + std::to_string(i));
    if (seen[p])
      throw usage_error("zero: layout.given_order" + where + " names parameter " + describe_parameter(names, p) +
                        " twice, at position " + std::to_string(i));
    seen[p] = true;
  }
}

//! The order the flat layout starts with: reverse registration order unless the layout says
//! otherwise (a learned order starts reversed and is replaced after the first micro-step).
//! Empty means registration order.
inline std::vector<std::size_t> initial_order(const layout_options& layout, std::size_t parameters) {
  switch (layout.order) {
    case gradient_order::registration: return {};
    case gradient_order::given: return layout.given_order;
    case gradient_order::reverse:
    case gradient_order::learned: break;
  }
  std::vector<std::size_t> order(parameters);
  for (std::size_t i = 0; i < parameters; ++i) order[i] = parameters - 1 - i;
  return order;
}

}  // namespace zero::engine
