#pragma once
//! @file cuda/bootstrap.hpp
//! Getting rank 0's NCCL unique id (an opaque 128-byte blob) to every rank before the NCCL
//! communicator exists: through a shared file, or over TCP from the address torchrun publishes
//! (`MASTER_ADDR`, `MASTER_PORT`, `RANK`, `WORLD_SIZE`). MPI users have
//! `zero/cuda/mpi_bootstrap.hpp`. Plain C++ and POSIX: no CUDA, no NCCL, no GPU; the id is
//! any 128 bytes here (`zero::nccl_unique_id()` makes a real one).
//!
//! * File. Rank 0 writes the id with a per-job nonce to a temporary name beside the path, syncs
//!   it and renames it over the path, so a reader sees the whole file or none. The other ranks
//!   poll the path until it holds an id tagged with their nonce: a file left by an earlier job
//!   (another nonce), a torn or foreign file, is never taken. Past the deadline they throw a
//!   `timeout_error` naming the path (and a stale nonce they saw). The file is left in place.
//! * TCP. Rank 0 listens on `port` (all interfaces) and answers each peer's hello (its rank and
//!   world size) with the id; peers connect to `address:port`, retrying until rank 0 listens.
//!   A peer whose world size differs, or a rank announced twice, makes rank 0 throw
//!   `mismatch_error` (and the peer too); ranks that never connect make rank 0 throw
//!   `timeout_error` naming them, and a peer that cannot reach rank 0 names the address.
//!
//! Every wait has a deadline; nothing here hangs.

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "zero/error.hpp"

namespace zero::cuda {

//! Bytes of an NCCL unique id (NCCL_UNIQUE_ID_BYTES).
inline constexpr std::size_t bootstrap_id_bytes = 128;

//! The blob the bootstraps move: an NCCL unique id, or any 128 bytes.
struct bootstrap_id {
  std::array<std::uint8_t, bootstrap_id_bytes> bytes{};
  friend bool operator==(const bootstrap_id&, const bootstrap_id&) = default;
};

//! Where and how the file bootstrap meets.
struct file_bootstrap {
  std::filesystem::path path;  //!< on a file system every rank sees (e.g. a shared home)
  std::string nonce;           //!< the same on every rank of this job and on no other job (e.g. the job id)
  int rank = 0;
  std::chrono::milliseconds timeout{std::chrono::minutes(5)};
  std::chrono::milliseconds poll_interval{20};
};

//! Where and how the TCP bootstrap meets.
struct tcp_bootstrap {
  std::string address;  //!< rank 0's host name or address, as peers reach it
  std::uint16_t port = 0;
  int rank = 0;
  int world_size = 1;
  std::chrono::milliseconds timeout{std::chrono::minutes(5)};
};

namespace detail {

using bootstrap_clock = std::chrono::steady_clock;

inline std::string errno_text(int code) { return std::string(std::strerror(code)); }

inline long long elapsed_ms(bootstrap_clock::time_point since) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(bootstrap_clock::now() - since).count();
}

// ---- file format: magic, nonce length, nonce, id, checksum (FNV-1a of everything before) ----

inline constexpr char file_magic[8] = {'Z', 'E', 'R', 'O', 'N', 'I', 'D', '1'};

inline std::uint32_t fnv1a(const std::uint8_t* data, std::size_t n) noexcept {
  std::uint32_t h = 2166136261u;
  for (std::size_t i = 0; i < n; ++i) h = (h ^ data[i]) * 16777619u;
  return h;
}

inline void put_u32(std::vector<std::uint8_t>& out, std::uint32_t v) {
  for (int k = 0; k < 4; ++k) out.push_back(static_cast<std::uint8_t>(v >> (8 * k)));
}
inline std::uint32_t get_u32(const std::uint8_t* p) noexcept {
  return static_cast<std::uint32_t>(p[0]) | (static_cast<std::uint32_t>(p[1]) << 8) |
         (static_cast<std::uint32_t>(p[2]) << 16) | (static_cast<std::uint32_t>(p[3]) << 24);
}

inline std::vector<std::uint8_t> encode_id_file(std::string_view nonce, const bootstrap_id& id) {
  std::vector<std::uint8_t> out(std::begin(file_magic), std::end(file_magic));
  put_u32(out, static_cast<std::uint32_t>(nonce.size()));
  out.insert(out.end(), nonce.begin(), nonce.end());
  out.insert(out.end(), id.bytes.begin(), id.bytes.end());
  put_u32(out, fnv1a(out.data(), out.size()));
  return out;
}

//! What a file holds: an id with its nonce, or nothing usable.
struct decoded_id_file {
  bool valid = false;
  std::string nonce;
  bootstrap_id id;
};

inline decoded_id_file decode_id_file(const std::vector<std::uint8_t>& in) {
  decoded_id_file d;
  constexpr std::size_t fixed = sizeof(file_magic) + 4 + bootstrap_id_bytes + 4;
  if (in.size() < fixed || std::memcmp(in.data(), file_magic, sizeof(file_magic)) != 0) return d;
  const std::uint32_t nonce_size = get_u32(in.data() + sizeof(file_magic));
  if (in.size() != fixed + nonce_size) return d;
  if (fnv1a(in.data(), in.size() - 4) != get_u32(in.data() + in.size() - 4)) return d;
  const std::uint8_t* p = in.data() + sizeof(file_magic) + 4;
  d.nonce.assign(reinterpret_cast<const char*>(p), nonce_size);
  std::memcpy(d.id.bytes.data(), p + nonce_size, bootstrap_id_bytes);
  d.valid = true;
  return d;
}

//! The whole file, or empty when it does not exist or cannot be read (yet).
inline std::vector<std::uint8_t> read_whole_file(const std::filesystem::path& path) {
  std::vector<std::uint8_t> out;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return out;
  std::uint8_t buffer[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.insert(out.end(), buffer, buffer + n);
    if (out.size() > (1u << 20)) break;  // not ours
  }
  ::close(fd);
  return out;
}

//! Writes `bytes` to path durably and atomically: a temporary name in the same directory,
//! fsync, rename over `path`, fsync of the directory.
inline void write_file_atomically(const std::filesystem::path& path, const std::vector<std::uint8_t>& bytes) {
  std::random_device device;
  const std::string suffix = ".tmp." + std::to_string(::getpid()) + "." + std::to_string(device());
  const std::filesystem::path temporary = path.string() + suffix;
  const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0)
    throw communicator_error("zero: file bootstrap: rank 0 cannot create " + temporary.string() + ": " + errno_text(errno));
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int code = errno;
      ::close(fd);
      ::unlink(temporary.c_str());
      throw communicator_error("zero: file bootstrap: rank 0 cannot write " + temporary.string() + ": " + errno_text(code));
    }
    done += static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    const int code = errno;
    ::unlink(temporary.c_str());
    throw communicator_error("zero: file bootstrap: rank 0 cannot sync " + temporary.string() + ": " + errno_text(code));
  }
  if (::rename(temporary.c_str(), path.c_str()) != 0) {
    const int code = errno;
    ::unlink(temporary.c_str());
    throw communicator_error("zero: file bootstrap: rank 0 cannot rename " + temporary.string() + " to " + path.string() +
                             ": " + errno_text(code));
  }
  const std::filesystem::path directory = path.has_parent_path() ? path.parent_path() : std::filesystem::path(".");
  const int dir = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    (void)::fsync(dir);  // best effort: some file systems refuse fsync on directories
    ::close(dir);
  }
}

// ---- TCP ----------------------------------------------------------------------------------

inline constexpr std::uint32_t tcp_magic = 0x5a524944u;  // "ZRID"
inline constexpr std::uint32_t tcp_version = 1;
enum class tcp_status : std::uint32_t { ok = 0, world_size_differs = 1, bad_rank = 2, duplicate_rank = 3 };

//! A file descriptor closed when it goes out of scope.
class socket_handle {
 public:
  socket_handle() = default;
  explicit socket_handle(int fd) noexcept : fd_(fd) {}
  socket_handle(socket_handle&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  socket_handle& operator=(socket_handle&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  socket_handle(const socket_handle&) = delete;
  socket_handle& operator=(const socket_handle&) = delete;
  ~socket_handle() { reset(); }
  int get() const noexcept { return fd_; }
  explicit operator bool() const noexcept { return fd_ >= 0; }
  void reset() noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

inline int remaining_ms(bootstrap_clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - bootstrap_clock::now()).count();
  return left <= 0 ? 0 : (left > 1000000 ? 1000000 : static_cast<int>(left));
}

//! Waits until fd is ready for `events` or the deadline passes; false at the deadline.
inline bool wait_ready(int fd, short events, bootstrap_clock::time_point deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    const int r = ::poll(&p, 1, remaining_ms(deadline));
    if (r > 0) return true;
    if (r == 0) return false;
    if (errno != EINTR) return false;
  }
}

//! Sends or receives exactly n bytes before the deadline. Returns an empty string on success,
//! otherwise what went wrong.
inline std::string transfer(int fd, std::uint8_t* data, std::size_t n, bool sending, bootstrap_clock::time_point deadline) {
  std::size_t done = 0;
  while (done < n) {
    if (!wait_ready(fd, sending ? POLLOUT : POLLIN, deadline)) return "timed out";
    const ssize_t r = sending ? ::send(fd, data + done, n - done, MSG_NOSIGNAL) : ::recv(fd, data + done, n - done, 0);
    if (r < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
    if (r < 0) return errno_text(errno);
    if (r == 0) return "connection closed";
    done += static_cast<std::size_t>(r);
  }
  return {};
}

inline void put_be32(std::uint8_t* p, std::uint32_t v) noexcept {
  const std::uint32_t n = htonl(v);
  std::memcpy(p, &n, 4);
}
inline std::uint32_t get_be32(const std::uint8_t* p) noexcept {
  std::uint32_t n;
  std::memcpy(&n, p, 4);
  return ntohl(n);
}

inline void set_nonblocking(int fd) { (void)::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL, 0) | O_NONBLOCK); }

inline std::string endpoint_text(const tcp_bootstrap& t) { return t.address + ":" + std::to_string(t.port); }

//! Rank 0: listen, answer world_size - 1 hellos with the id.
inline void serve_id(const tcp_bootstrap& t, const bootstrap_id& id) {
  const auto start = bootstrap_clock::now();
  const auto deadline = start + t.timeout;
  const std::string where = "zero: TCP bootstrap: rank 0 on port " + std::to_string(t.port);
  // all interfaces: IPv6 with IPv4-mapped addresses where the system has IPv6, else IPv4
  socket_handle listener;
  int error = 0;
  for (const int family : {AF_INET6, AF_INET}) {
    socket_handle s(::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!s) {
      error = errno;
      continue;
    }
    const int on = 1, off = 0;
    (void)::setsockopt(s.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    int bound;
    if (family == AF_INET6) {
      (void)::setsockopt(s.get(), IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
      sockaddr_in6 a{};
      a.sin6_family = AF_INET6;
      a.sin6_addr = in6addr_any;
      a.sin6_port = htons(t.port);
      bound = ::bind(s.get(), reinterpret_cast<const sockaddr*>(&a), sizeof a);
    } else {
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(INADDR_ANY);
      a.sin_port = htons(t.port);
      bound = ::bind(s.get(), reinterpret_cast<const sockaddr*>(&a), sizeof a);
    }
    if (bound == 0 && ::listen(s.get(), t.world_size < 4096 ? t.world_size : 4096) == 0) {
      listener = std::move(s);
      break;
    }
    error = errno;
  }
  if (!listener) throw communicator_error(where + ": cannot listen: " + errno_text(error) + " (is MASTER_PORT in use?)");
  set_nonblocking(listener.get());

  std::vector<char> served(static_cast<std::size_t>(t.world_size), 0);
  served[0] = 1;
  int remaining = t.world_size - 1;
  while (remaining > 0) {
    if (!wait_ready(listener.get(), POLLIN, deadline)) {
      std::string missing;
      for (int r = 1; r < t.world_size; ++r)
        if (served[static_cast<std::size_t>(r)] == 0) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
      throw timeout_error(where + ": rank(s) " + missing + " of " + std::to_string(t.world_size) +
                          " did not connect within " + std::to_string(elapsed_ms(start)) + " ms");
    }
    socket_handle peer(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!peer) continue;  // EAGAIN after a spurious wake-up, or a connection that went away
    std::uint8_t hello[16];
    if (!transfer(peer.get(), hello, sizeof hello, false, deadline).empty()) continue;  // not a peer of ours
    if (get_be32(hello) != tcp_magic || get_be32(hello + 4) != tcp_version) continue;
    const std::uint32_t rank = get_be32(hello + 8), world = get_be32(hello + 12);
    tcp_status status = tcp_status::ok;
    if (world != static_cast<std::uint32_t>(t.world_size)) status = tcp_status::world_size_differs;
    else if (rank == 0 || rank >= world) status = tcp_status::bad_rank;
    else if (served[rank] != 0) status = tcp_status::duplicate_rank;
    std::uint8_t reply[8 + bootstrap_id_bytes] = {};
    put_be32(reply, tcp_magic);
    put_be32(reply + 4, static_cast<std::uint32_t>(status));
    if (status == tcp_status::ok) std::memcpy(reply + 8, id.bytes.data(), bootstrap_id_bytes);
    const std::string sent = transfer(peer.get(), reply, sizeof reply, true, deadline);
    if (status == tcp_status::world_size_differs)
      throw mismatch_error(where + ": a peer announcing rank " + std::to_string(rank) + " has WORLD_SIZE " +
                           std::to_string(world) + ", rank 0 has " + std::to_string(t.world_size));
    if (status == tcp_status::bad_rank)
      throw mismatch_error(where + ": a peer announced rank " + std::to_string(rank) + ", outside 1.." +
                           std::to_string(t.world_size - 1));
    if (status == tcp_status::duplicate_rank)
      throw mismatch_error(where + ": rank " + std::to_string(rank) + " connected twice (two processes with RANK=" +
                           std::to_string(rank) + "?)");
    if (!sent.empty()) continue;  // the peer went away: it may retry
    served[rank] = 1;
    --remaining;
  }
}

//! A peer: connect (retrying while rank 0 is not listening yet), say hello, read the id.
inline bootstrap_id fetch_id(const tcp_bootstrap& t) {
  const auto start = bootstrap_clock::now();
  const auto deadline = start + t.timeout;
  const std::string who = "zero: TCP bootstrap: rank " + std::to_string(t.rank) + " of " + std::to_string(t.world_size);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  const std::string port = std::to_string(t.port);
  const int resolved = ::getaddrinfo(t.address.c_str(), port.c_str(), &hints, &found);
  if (resolved != 0)
    throw communicator_error(who + ": cannot resolve MASTER_ADDR '" + t.address + "': " + ::gai_strerror(resolved));
  std::vector<std::pair<sockaddr_storage, socklen_t>> targets;
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    sockaddr_storage s{};
    std::memcpy(&s, a->ai_addr, a->ai_addrlen);
    targets.emplace_back(s, a->ai_addrlen);
  }
  ::freeaddrinfo(found);

  std::string last_error = "no address";
  for (;;) {
    for (const auto& [address, length] : targets) {
      socket_handle s(::socket(address.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
      if (!s) {
        last_error = errno_text(errno);
        continue;
      }
      if (::connect(s.get(), reinterpret_cast<const sockaddr*>(&address), length) != 0) {
        if (errno != EINPROGRESS) {
          last_error = errno_text(errno);
          continue;
        }
        if (!wait_ready(s.get(), POLLOUT, deadline)) {
          last_error = "connect timed out";
          continue;
        }
        int code = 0;
        socklen_t code_length = sizeof code;
        (void)::getsockopt(s.get(), SOL_SOCKET, SO_ERROR, &code, &code_length);
        if (code != 0) {
          last_error = errno_text(code);
          continue;
        }
      }
      std::uint8_t hello[16];
      put_be32(hello, tcp_magic);
      put_be32(hello + 4, tcp_version);
      put_be32(hello + 8, static_cast<std::uint32_t>(t.rank));
      put_be32(hello + 12, static_cast<std::uint32_t>(t.world_size));
      std::uint8_t reply[8 + bootstrap_id_bytes];
      std::string failure = transfer(s.get(), hello, sizeof hello, true, deadline);
      if (failure.empty()) failure = transfer(s.get(), reply, sizeof reply, false, deadline);
      if (!failure.empty()) {
        last_error = "exchange with rank 0 failed: " + failure;
        continue;
      }
      if (get_be32(reply) != tcp_magic) throw communicator_error(who + ": " + endpoint_text(t) + " is not a zero TCP bootstrap");
      const auto status = static_cast<tcp_status>(get_be32(reply + 4));
      if (status == tcp_status::world_size_differs)
        throw mismatch_error(who + ": rank 0 at " + endpoint_text(t) + " has another WORLD_SIZE");
      if (status == tcp_status::bad_rank || status == tcp_status::duplicate_rank)
        throw mismatch_error(who + ": rank 0 at " + endpoint_text(t) + " refused RANK=" + std::to_string(t.rank) +
                             (status == tcp_status::bad_rank ? " (outside the world)" : " (already connected)"));
      if (status != tcp_status::ok) throw communicator_error(who + ": rank 0 answered an unknown status");
      bootstrap_id id;
      std::memcpy(id.bytes.data(), reply + 8, bootstrap_id_bytes);
      return id;
    }
    if (bootstrap_clock::now() >= deadline)
      throw timeout_error(who + " could not get the id from rank 0 at MASTER_ADDR:MASTER_PORT = " + endpoint_text(t) +
                          " within " + std::to_string(elapsed_ms(start)) + " ms (last error: " + last_error +
                          "; is rank 0 running?)");
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

inline long long parse_integer(const char* name, long long low, long long high) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0')
    throw usage_error(std::string("zero: TCP bootstrap: environment variable ") + name +
                      " is not set (torchrun sets MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE)");
  char* end = nullptr;
  errno = 0;
  const long long value = std::strtoll(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || value < low || value > high)
    throw usage_error(std::string("zero: TCP bootstrap: ") + name + "='" + text + "' is not an integer in [" +
                      std::to_string(low) + ", " + std::to_string(high) + "]");
  return value;
}

}  // namespace detail

//! The id every rank of the file bootstrap `f` shares: rank 0 publishes `id`, the others wait
//! for it. @pre f.nonce is non-empty and the same on every rank of the job
//! @throws usage_error for an empty nonce or path, timeout_error naming the path at the
//!         deadline, communicator_error when rank 0 cannot write the file
inline bootstrap_id exchange_id(const file_bootstrap& f, const bootstrap_id& id) {
  if (f.nonce.empty())
    throw usage_error("zero: file bootstrap needs a per-job nonce (for example the job id), so that a file left by an "
                      "earlier job is never read");
  if (f.path.empty()) throw usage_error("zero: file bootstrap needs a path");
  if (f.rank == 0) {
    detail::write_file_atomically(f.path, detail::encode_id_file(f.nonce, id));
    return id;
  }
  const auto start = detail::bootstrap_clock::now();
  std::string stale;
  for (;;) {
    const detail::decoded_id_file d = detail::decode_id_file(detail::read_whole_file(f.path));
    if (d.valid && d.nonce == f.nonce) return d.id;
    if (d.valid) stale = d.nonce;
    if (detail::bootstrap_clock::now() - start >= f.timeout)
      throw timeout_error("zero: file bootstrap: rank " + std::to_string(f.rank) + " found no id for nonce '" + f.nonce +
                          "' at " + f.path.string() + " within " + std::to_string(detail::elapsed_ms(start)) + " ms" +
                          (stale.empty() ? std::string(" (is rank 0 running, and is the path on a shared file system?)")
                                         : " (the file there has nonce '" + stale + "': stale, from another job)"));
    std::this_thread::sleep_for(f.poll_interval);
  }
}

//! The id every rank of the TCP bootstrap `t` shares: rank 0 serves `id`, the others fetch it.
//! @throws usage_error for a bad rank or world size, timeout_error at the deadline (naming the
//!         ranks that never connected, or the address that could not be reached),
//!         mismatch_error when ranks disagree on the world size or two claim one rank
inline bootstrap_id exchange_id(const tcp_bootstrap& t, const bootstrap_id& id) {
  if (t.world_size < 1 || t.rank < 0 || t.rank >= t.world_size)
    throw usage_error("zero: TCP bootstrap: rank " + std::to_string(t.rank) + " outside a world of " +
                      std::to_string(t.world_size));
  if (t.world_size == 1) return id;
  if (t.rank == 0) {
    detail::serve_id(t, id);
    return id;
  }
  return detail::fetch_id(t);
}

//! The TCP bootstrap torchrun describes: MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE.
//! @throws usage_error naming a variable that is missing or malformed
inline tcp_bootstrap tcp_bootstrap_from_environment(std::chrono::milliseconds timeout = std::chrono::minutes(5)) {
  tcp_bootstrap t;
  const char* address = std::getenv("MASTER_ADDR");
  if (address == nullptr || *address == '\0')
    throw usage_error("zero: TCP bootstrap: environment variable MASTER_ADDR is not set (torchrun sets MASTER_ADDR, "
                      "MASTER_PORT, RANK and WORLD_SIZE)");
  t.address = address;
  t.port = static_cast<std::uint16_t>(detail::parse_integer("MASTER_PORT", 1, 65535));
  t.world_size = static_cast<int>(detail::parse_integer("WORLD_SIZE", 1, 1 << 24));
  t.rank = static_cast<int>(detail::parse_integer("RANK", 0, t.world_size - 1));
  t.timeout = timeout;
  return t;
}

}  // namespace zero::cuda
