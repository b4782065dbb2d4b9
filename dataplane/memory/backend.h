// backend.h — the in-memory back end (io::Backend without sockets), for tests: the proof that
// the transport seam is real (issue #14). Deterministic in what it delivers: each direction of
// a connection is a pipe whose bytes arrive in pieces of `split` bytes after `delay_ms`, and a
// connection can be reset after a given number of bytes — faults a kernel socket cannot be
// asked for on demand.
//
// Loops are real threads with a steady clock (the endpoints above time out by it); Post is
// thread safe. A pipe holds at most kPipeCapacity bytes not yet read: a writer that outruns its
// reader gets WouldBlock and is told when there is room, as with a socket buffer.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "dataplane/io/transport.h"

namespace mailseal::memory {

// Faults: how the bytes of one direction travel.
struct Faults {
  size_t split = 0;            // deliver in pieces of this many bytes (0: as written)
  int64_t delay_ms = 0;        // each piece arrives this long after it was written
  int64_t reset_after = -1;    // after this many bytes the connection is reset (-1: never)
};

class MemLoop : public io::Loop {
 public:
  MemLoop() = default;
  void Post(std::function<void()> task) override;
  // PostAfter: `task` on the loop's thread once `ms` have passed. Thread safe.
  void PostAfter(int64_t ms, std::function<void()> task);
  int64_t NowMs() const override;
  void Run(int tick_ms, const std::function<void()>& tick, const std::function<void()>& after_batch) override;
  void Stop() override;
  void RunOnce(int timeout_ms) override;

 private:
  std::vector<std::function<void()>> TakeDue(int64_t until);
  std::mutex mu_;
  std::condition_variable cv_;
  std::multimap<int64_t, std::function<void()>> due_;   // by time; Post uses "now"
  bool stop_ = false;
};

class MemBackend : public io::Backend {
 public:
  MemBackend();
  ~MemBackend() override;
  std::unique_ptr<io::Loop> NewLoop() override;
  Result<std::unique_ptr<io::Listener>> Listen(io::Loop* loop, int index, io::AcceptFn on_accept) override;
  // Connect reaches the listener of net thread 0 (in-memory there is one address).
  void Connect(io::Loop* loop, const sockaddr_storage& to, int timeout_ms, io::ConnectFn done) override;

  // Dial: a client stream on `loop` to the listener of net thread `index`, coming from
  // `from_ip`, with the faults of each direction; nothing (and why) when nobody listens.
  Result<std::unique_ptr<io::Stream>> Dial(io::Loop* loop, int index, const std::string& from_ip = "127.0.0.1",
                                           Faults to_server = {}, Faults to_client = {});
  // Faults for connections made by Connect from now on, and the listener they reach (the
  // in-memory network has no addresses: every Connect goes to net thread `index`'s listener).
  void SetConnectFaults(Faults to_server, Faults to_client);
  void SetConnectTarget(int index);

  struct State;

 private:
  std::shared_ptr<State> state_;
};

}  // namespace mailseal::memory
