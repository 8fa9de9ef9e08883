#pragma once
//! @file engine/gradient_records.hpp
//! The gradients a rank has reported this micro-step and not yet taken in: where each report's
//! data is (a framework span, or the parameter's engine slot), per parameter in report order.
//! Sized once for every report a micro-step can hold; adding and clearing allocate nothing.

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace zero::engine {

template <class Grad>
class gradient_records {
 public:
  static constexpr std::size_t none = static_cast<std::size_t>(-1);

  gradient_records() = default;
  //! Room for `expected_reports[p]` reports of each parameter p.
  explicit gradient_records(std::span<const std::uint32_t> expected_reports) {
    std::size_t capacity = 0;
    for (auto r : expected_reports) capacity += r;
    data_.assign(capacity, nullptr);
    param_.assign(capacity, 0);
    next_.assign(capacity, none);
    head_.assign(expected_reports.size(), none);
    tail_.assign(expected_reports.size(), none);
  }

  //! Records a report of parameter p whose data is `data`. @pre room left for p
  void add(std::size_t p, const Grad* data) noexcept {
    const std::size_t r = used_++;
    data_[r] = data;
    param_[r] = p;
    next_[r] = none;
    if (tail_[p] == none) head_[p] = r;
    else next_[tail_[p]] = r;
    tail_[p] = r;
  }

  //! Calls f(data, first) for each report of parameter p, in report order.
  template <class F>
  void for_each(std::size_t p, F&& f) const {
    bool first = true;
    for (std::size_t r = head_[p]; r != none; r = next_[r], first = false) f(data_[r], first);
  }
  //! The reports of every parameter, in the order they came: count, and the i-th's parameter and data.
  std::size_t size() const noexcept { return used_; }
  std::size_t param(std::size_t i) const noexcept { return param_[i]; }
  const Grad* data(std::size_t i) const noexcept { return data_[i]; }

  void clear() noexcept {
    for (std::size_t i = 0; i < used_; ++i) head_[param_[i]] = tail_[param_[i]] = none;
    used_ = 0;
  }

 private:
  std::vector<const Grad*> data_;
  std::vector<std::size_t> param_, next_;
  std::vector<std::size_t> head_, tail_;
  std::size_t used_ = 0;
};

}  // namespace zero::engine
