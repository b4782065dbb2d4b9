// transport.h — the seam between the network back ends and everything above them (issue #14).
//
// A back end gives event loops (one per net thread), byte streams with readiness, listeners
// and outbound connections. The SMTP endpoints above it (endpoint/) see only these types:
// they never call a socket function, so the same code runs on the kernel back end (epoll over
// sockets, kernel/), the in-memory back end (memory/: deterministic pipes for tests) and the
// DPDK back end (its own TCP).
//
// Threading: a Loop runs on one thread; a Stream, its handler and its Listener belong to the
// loop they were made on and are used only from its thread. Post() is the one call any thread
// may make.
//
// SECURITY: streams carry untrusted bytes; the back end bounds nothing above the transport —
// what is read in one call is bounded by the caller's buffer, what waits to be written by the
// caller (Write takes what fits and says so).
#pragma once

#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "dataplane/base/status.h"

namespace mailseal::io {

// IoResult: what one Read or Write did.
struct IoResult {
  enum Kind { kOk, kWouldBlock, kClosed, kFailed };
  Kind kind = kOk;
  size_t bytes = 0;     // kOk: how many bytes were read or taken
  std::string error;    // kFailed: why (reset, timeout, ...)
  static IoResult Ok(size_t n) { return {kOk, n, {}}; }
  static IoResult WouldBlock() { return {kWouldBlock, 0, {}}; }
  static IoResult Closed() { return {kClosed, 0, {}}; }
  static IoResult Failed(std::string why) { return {kFailed, 0, std::move(why)}; }
};

// StreamHandler: told when a stream it watches may be read (data, its end, or an error to
// collect with Read) or written.
class StreamHandler {
 public:
  virtual ~StreamHandler() = default;
  virtual void OnReady(bool readable, bool writable) = 0;
};

// Stream: one connection's bytes. Destroying it closes the connection (an orderly close
// after what was written; the peer's reads end).
class Stream {
 public:
  virtual ~Stream() = default;
  virtual IoResult Read(char* buf, size_t cap) = 0;
  // Write takes as much of `bytes` as fits now (kOk with the count, possibly 0 of them:
  // kWouldBlock) — the rest is the caller's to keep and retry when writable.
  virtual IoResult Write(std::string_view bytes) = 0;
  // Watch: from now on tell `h` when the stream is readable (`read`) or writable (`write`).
  virtual void Watch(StreamHandler* h, bool read, bool write) = 0;
  virtual const sockaddr_storage& peer() const = 0;
};

// Loop: one net thread's event loop.
class Loop {
 public:
  virtual ~Loop() = default;
  // Post runs `task` on the loop's thread soon. Thread safe.
  virtual void Post(std::function<void()> task) = 0;
  // NowMs: monotonic milliseconds (the loop's clock).
  virtual int64_t NowMs() const = 0;
  // Run dispatches until Stop(); `tick` runs about every tick_ms (timers, sweeps),
  // `after_batch` after each batch of events (deferred frees happen there).
  virtual void Run(int tick_ms, const std::function<void()>& tick, const std::function<void()>& after_batch) = 0;
  virtual void Stop() = 0;   // thread safe
  // RunOnce dispatches one batch of what is ready within `timeout_ms` (posted tasks, timers,
  // readiness): for a thread that drives its streams step by step with deadlines (delivery).
  virtual void RunOnce(int timeout_ms) = 0;
};

using AcceptFn = std::function<void(std::unique_ptr<Stream>)>;
using ConnectFn = std::function<void(Result<std::unique_ptr<Stream>>)>;

// Listener: accepts connections on a loop and hands each to the AcceptFn it was made with.
class Listener {
 public:
  virtual ~Listener() = default;
  // Pause stops accepting (a drain); Resume starts again.
  virtual void Pause() = 0;
  virtual void Resume() = 0;
};

// Backend: what a network back end provides.
class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::unique_ptr<Loop> NewLoop() = 0;
  // Listen: the listener of net thread `index` on `loop`.
  virtual Result<std::unique_ptr<Listener>> Listen(Loop* loop, int index, AcceptFn on_accept) = 0;
  // Connect opens a connection to `to` from `loop`; `done` runs on the loop's thread with the
  // stream or why not, within `timeout_ms`.
  virtual void Connect(Loop* loop, const sockaddr_storage& to, int timeout_ms, ConnectFn done) = 0;
};

}  // namespace mailseal::io
