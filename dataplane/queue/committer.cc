// committer.cc — see committer.h.
#include "dataplane/queue/committer.h"

#include <pthread.h>

#include <cstdlib>

#include "dataplane/base/log.h"

namespace mailseal::queue {

Committer::Committer(Spool* spool, QueueManager* qmgr) : spool_(spool), qmgr_(qmgr) {}

Committer::~Committer() { Stop(); }

void Committer::Start() {
  thread_ = std::thread([this] { Run(); });
  pthread_setname_np(thread_.native_handle(), "commit");
}

void Committer::Stop() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Committer::Commit(std::unique_ptr<SpoolWriter> writer, Done done) {
  {
    std::lock_guard<std::mutex> l(mu_);
    items_.push_back({std::move(writer), std::move(done)});
  }
  cv_.notify_one();
}

void Committer::Run() {
  while (true) {
    std::deque<Item> batch;
    {
      std::unique_lock<std::mutex> l(mu_);
      cv_.wait(l, [&] { return stop_ || !items_.empty(); });
      if (items_.empty() && stop_) return;
      batch.swap(items_);
    }
    std::vector<Status> results(batch.size());
    bool any_published = false;
    for (size_t i = 0; i < batch.size(); ++i) {
      results[i] = batch[i].writer->Finish();
      if (results[i].ok()) results[i] = batch[i].writer->Publish();
      any_published = any_published || results[i].ok();
    }
    Status dir = any_published ? spool_->FsyncDir(SpoolState::kActive) : OkStatus();
    if (!dir.ok()) {
      // A failed fsync leaves the disk's state unknown (LevelDB's rule: after a failed fsync
      // every later write fails). Acknowledge nothing, and exit so that systemd restarts us;
      // recovery then finds every published file in active/. A duplicate, never a loss.
      base::Log(base::LogLevel::kError, "spool", "fsync of active/ failed, exiting",
                {{"error", dir.message()}});
      std::abort();
    }
    for (size_t i = 0; i < batch.size(); ++i) {
      Item& it = batch[i];
      std::string id = it.writer->id();
      if (results[i].ok()) {
        qmgr_->Submit(it.writer->TakeMessage());
      } else {
        base::Log(base::LogLevel::kError, "spool", "commit failed",
                  {{"qid", id}, {"error", results[i].message()}});
        it.writer->Abandon();
      }
      it.done(results[i], id);
    }
  }
}

}  // namespace mailseal::queue
