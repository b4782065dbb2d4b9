// committer.h — makes received messages durable, off the net threads.
//
// A net thread hands over a finished SpoolWriter; the committer writes END, fdatasyncs,
// renames into active/, fsyncs active/ once for the whole batch (group commit), hands the
// message to the queue manager, and only then reports success — the net thread sends 250
// after that report and never before.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

#include "dataplane/queue/queue_manager.h"
#include "dataplane/queue/spool.h"

namespace mailseal::queue {

class Committer {
 public:
  // done(status, queue_id) runs on the committer thread; it must only post to the owner.
  using Done = std::function<void(const Status&, const std::string&)>;

  Committer(Spool* spool, QueueManager* qmgr);
  ~Committer();
  void Start();
  // Stop finishes every commit already handed over, then joins.
  void Stop();
  void Commit(std::unique_ptr<SpoolWriter> writer, Done done);

 private:
  struct Item {
    std::unique_ptr<SpoolWriter> writer;
    Done done;
  };
  void Run();
  Spool* spool_;
  QueueManager* qmgr_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> items_;
  bool stop_ = false;
};

}  // namespace mailseal::queue
