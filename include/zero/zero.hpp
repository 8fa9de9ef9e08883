#pragma once
//! @file zero.hpp
//! The whole host-side library: include this one header.
//!
//! | header                        | what it holds                                              |
//! |-------------------------------|------------------------------------------------------------|
//! | types.hpp                     | fp32/bf16/fp16, conversions, raw_span                      |
//! | precision.hpp                 | the precision bundle, the stage                            |
//! | partitioner.hpp               | Partitioner concept; contiguous and bucketed partitioners  |
//! | communicator.hpp              | Communicator concept; single-rank communicator             |
//! | thread_communicator.hpp       | N ranks as threads of one process                          |
//! | update_rule.hpp               | Optimizer (update rule) concepts; adamw, adam, sgd, lion,  |
//! |                               | adagrad, lamb (tensor-wise)                                |
//! | activation_checkpointer.hpp   | ActivationCheckpointer concept; plain, keep-everything,    |
//! |                               | pass-through; heap storage, contiguous arena (MD)          |
//! | partitioned_checkpointer.hpp  | checkpoints partitioned over a group (P_a)                 |
//! | offloaded_checkpointer.hpp    | checkpoints offloaded to host memory (P_a+cpu)             |
//! | loss_scaler.hpp               | dynamic / fixed loss scaling (DeepSpeed's semantics)       |
//! | memory.hpp                    | memory kinds, per-rank report, expected_memory             |
//! | checkpoint.hpp                | save_checkpoint / load_checkpoint / consolidate (resharding) |
//! | optimizer.hpp                 | zero::optimizer, the composed engine                       |
//! | plan.hpp                      | constexpr memory planner (zero-plan)                       |

#include "zero/activation_checkpointer.hpp"
#include "zero/arithmetic.hpp"
#include "zero/checkpoint.hpp"
#include "zero/communicator.hpp"
#include "zero/config.hpp"
#include "zero/error.hpp"
#include "zero/loss_scaler.hpp"
#include "zero/memory.hpp"
#include "zero/offloaded_checkpointer.hpp"
#include "zero/optimizer.hpp"
#include "zero/partitioned_checkpointer.hpp"
#include "zero/partitioner.hpp"
#include "zero/plan.hpp"
#include "zero/precision.hpp"
#include "zero/thread_communicator.hpp"
#include "zero/types.hpp"
#include "zero/update_rule.hpp"
