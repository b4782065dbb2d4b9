// backend.h — the kernel back end (io::Backend over epoll and sockets): the embedded default.
//
// Listening sockets are opened by the daemon (one SO_REUSEPORT socket per net thread and
// address, OpenListener) and handed over; each net thread's loop accepts from its own.
//
// SECURITY: at the descriptor limit the listener spends a reserve descriptor to answer one
// waiting client `busy_reply` and close, then pauses accepting for a second instead of
// spinning (issue #13); refusals are logged at most once every 10 s with a count.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "dataplane/io/transport.h"
#include "dataplane/kernel/epoll_loop.h"

namespace mailseal::kernel {

// OpenListener: a non-blocking listening socket with SO_REUSEPORT. `port` 0 picks one; the
// chosen port is written back.
Result<int> OpenListener(const std::string& ip, uint16_t* port);

class KernelBackend : public io::Backend {
 public:
  // busy_reply: what a client is told when the descriptor limit is reached.
  explicit KernelBackend(std::string busy_reply = "");
  // SetListeners: listen_fds[i] are the listening sockets of net thread i (owned by the
  // backend from now on); before the first Listen.
  void SetListeners(std::vector<std::vector<int>> listen_fds);
  ~KernelBackend() override;
  std::unique_ptr<io::Loop> NewLoop() override;
  Result<std::unique_ptr<io::Listener>> Listen(io::Loop* loop, int index, io::AcceptFn on_accept) override;
  void Connect(io::Loop* loop, const sockaddr_storage& to, int timeout_ms, io::ConnectFn done) override;

 private:
  std::vector<std::vector<int>> listen_fds_;
  std::string busy_reply_;
};

}  // namespace mailseal::kernel
