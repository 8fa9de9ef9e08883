#pragma once
#if !defined(ZERO_DETAIL_INCLUDE_ALLOWED)
#error "zero/detail/worker_pool.hpp is internal: include <zero/optimizer.hpp> (or <zero/zero.hpp>)"
#endif
// A fixed set of worker threads that run one job at a time, split by thread index. Built once
// (at optimizer construction); running a job allocates nothing. Idle workers sleep on a
// condition variable.

#include <algorithm>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

namespace zero::detail {

class worker_pool {
 public:
  //! @param threads total threads taking part in a job, the caller included; 0 means the
  //!        hardware's count
  explicit worker_pool(unsigned threads = 1) {
    if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
    size_ = threads;
    workers_.reserve(threads - 1);
    for (unsigned t = 1; t < threads; ++t) workers_.emplace_back([this, t] { work(t); });
  }
  worker_pool(const worker_pool&) = delete;
  worker_pool& operator=(const worker_pool&) = delete;
  ~worker_pool() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& w : workers_) w.join();
  }

  unsigned size() const noexcept { return size_; }

  //! Calls job(t, size()) for every t in [0, size()), t = 0 on the calling thread, and returns
  //! when all have finished. Rethrows the first exception a thread threw.
  template <class Job>
  void run(Job& job) {
    if (size_ == 1) {
      job(0u, 1u);
      return;
    }
    {
      std::lock_guard lock(mutex_);
      job_ = &job;
      call_ = [](void* j, unsigned t, unsigned n) { (*static_cast<Job*>(j))(t, n); };
      pending_ = size_ - 1;
      error_ = nullptr;
      ++generation_;
    }
    wake_.notify_all();
    std::exception_ptr mine;
    try {
      job(0u, size_);
    } catch (...) {
      mine = std::current_exception();
    }
    std::unique_lock lock(mutex_);
    done_.wait(lock, [&] { return pending_ == 0; });
    if (mine) std::rethrow_exception(mine);
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void work(unsigned t) {
    std::uint64_t seen = 0;
    for (;;) {
      void* job;
      void (*call)(void*, unsigned, unsigned);
      {
        std::unique_lock lock(mutex_);
        wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
        if (stopping_) return;
        seen = generation_;
        job = job_;
        call = call_;
      }
      std::exception_ptr error;
      try {
        call(job, t, size_);
      } catch (...) {
        error = std::current_exception();
      }
      {
        std::lock_guard lock(mutex_);
        if (error && !error_) error_ = error;
        if (--pending_ == 0) done_.notify_one();
      }
    }
  }

  unsigned size_ = 1;
  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::uint64_t generation_ = 0;
  unsigned pending_ = 0;
  bool stopping_ = false;
  void* job_ = nullptr;
  void (*call_)(void*, unsigned, unsigned) = nullptr;
  std::exception_ptr error_;
};

//! The part [begin, end) of `count` items that thread t of n takes.
inline std::pair<std::size_t, std::size_t> share(std::size_t count, unsigned t, unsigned n) noexcept {
  const std::size_t per = count / n, extra = count % n;
  const std::size_t begin = t * per + std::min<std::size_t>(t, extra);
  return {begin, begin + per + (t < extra ? 1 : 0)};
}

}  // namespace zero::detail
