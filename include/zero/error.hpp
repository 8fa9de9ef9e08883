#pragma once
//! @file error.hpp
//! The one error model of `zero`: the host API throws these; device code never throws.
//! Every message says what was wrong, where (which parameter, which rank, which collective)
//! and, where it helps, what to do.

#include <stdexcept>
#include <string>

namespace zero {

//! Base of every exception `zero` throws.
class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

//! Bad input from the caller: a null or zero-length span, a size that does not match, an index
//! out of range, an invalid hyperparameter. Nothing the caller gave was modified.
class usage_error : public error {
 public:
  using error::error;
};

//! Ranks disagree: a different parameter layout, precision, stage or options at construction,
//! or a different collective (kind, count, element type) at the same point of the program.
class mismatch_error : public error {
 public:
  using error::error;
};

//! A collective did not complete before its deadline (a rank never arrived, or left).
class timeout_error : public error {
 public:
  using error::error;
};

//! A communicator that an earlier failure (timeout, mismatch, a rank that left) made unusable.
class communicator_error : public error {
 public:
  using error::error;
};

}  // namespace zero
