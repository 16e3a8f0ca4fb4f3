// A thin space's run-time state inside its Volume (volume_thin.cpp): the pool that maps the space's
// virtual clusters to clusters of the layout's address range, its metadata store over the members, and
// the worker thread that owns both.
//
// Why a worker thread: the pool has no lock of its own and its commit writes metadata pages to every
// member and waits for them (MemberMetadataStore blocks), which no reactor may do. Every thin request is
// planned there (lookups, allocation, UNMAP, commits) in the order it arrived, and its data moves through
// the ordinary layout path (Volume::submit_physical) on the reactor that submitted it. Only the rare
// synchronous pieces (zeroing the unwritten rest of a partly written 4 KiB block, the copy of a shared
// cluster, the flush before a commit) wait on the worker.
#pragma once

#include "common/function.hpp"
#include "volume/thin/member_store.hpp"
#include "volume/thin/pool.hpp"

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

namespace ispace::volume {

struct ThinState {
    std::unique_ptr<thin::MemberMetadataStore> store;
    std::optional<thin::ThinPool> pool; // worker only (after open)
    uint32_t device = 0;
    uint64_t cluster_size = 0;
    uint64_t virtual_size = 0;  // the space's size as its users see it
    uint64_t physical_size = 0; // pool clusters * cluster size: the layout range the pool uses

    // For status(), any thread; the worker updates them after every change.
    std::atomic<uint64_t> allocated_clusters{0};
    std::atomic<uint64_t> pool_clusters{0};
    std::atomic<bool> full{false}; // the last allocation failed (until one succeeds or space is freed)
    std::atomic<uint64_t> commits{0};
    std::atomic<uint64_t> commit_failures{0};

    // Data requests the worker has planned and handed to a reactor, not yet completed: a commit waits
    // for them (their data reaches the members before the map that points at it is durable, and a
    // cluster freed by UNMAP is not reused under a write still landing in it).
    std::atomic<uint64_t> inflight{0};

    std::thread worker;
    std::mutex mutex;
    std::condition_variable wake;
    std::deque<Function<void()>> jobs;
    bool stopping = false;
};

} // namespace ispace::volume
