// Test helpers for the thin pool: a data area that holds one token per 4 KiB block (what the data path
// would have written there), and the data path's part of a write — the copy a WritePlan asks for, then the
// request's blocks — so that tests can read back what each device shows.
#pragma once

#include "volume/thin/pool.hpp"

#include <gtest/gtest.h>

#include <cerrno>
#include <cstdint>
#include <vector>

namespace ispace::volume::thin::testing {

struct DataArea {
    DataArea(uint64_t clusters, uint32_t cluster_blocks)
        : blocks_per_cluster(cluster_blocks), tokens(clusters * cluster_blocks, 0) {}

    uint64_t& at(uint64_t cluster, uint32_t block) { return tokens[cluster * blocks_per_cluster + block]; }

    uint32_t blocks_per_cluster;
    std::vector<uint64_t> tokens;
};

// The data path's copier: copies up to `max_blocks` pending blocks of the deferred copy of `cluster` (of
// every record: no_cluster) from its base and tells the pool.
inline void complete_deferred(ThinPool& pool, DataArea& data, uint64_t cluster = no_cluster,
                              uint32_t max_blocks = ~0u) {
    for (const DeferredCopy* d = pool.deferred(cluster); d != nullptr && max_blocks > 0;
         d = pool.deferred(cluster)) {
        uint64_t n = d->cluster;
        WrittenMask done{};
        for (uint32_t b = 0; b < pool.cluster_blocks() && max_blocks > 0; ++b) {
            if (mask_test(d->pending, b)) {
                data.at(n, b) = data.at(d->base, b);
                mask_set_range(done, b, 1);
                --max_blocks;
            }
        }
        pool.deferred_copied(n, done);
    }
}

// Writes `token` to blocks [first, first + count) of `vcluster` of `device` as the data path would: asks
// the pool (completing a deferred copy first when it says so), copies what the plan says, writes. Returns
// the pool's answer.
inline Result<WritePlan> write_blocks(ThinPool& pool, DataArea& data, uint32_t device, uint64_t vcluster,
                                      uint32_t first, uint32_t count, uint64_t token) {
    auto plan = pool.write(device, vcluster, first, count);
    if (!plan && plan.error().code == EAGAIN) {
        auto m = pool.lookup(device, vcluster);
        EXPECT_TRUE(m.ok() && m->has_value() && (*m)->base != no_cluster);
        complete_deferred(pool, data, (*m)->physical);
        plan = pool.write(device, vcluster, first, count);
    }
    if (!plan) {
        return plan;
    }
    if (plan->copy_from != no_cluster) {
        for (uint32_t b = 0; b < pool.cluster_blocks(); ++b) {
            if (mask_test(plan->copy_blocks, b)) {
                data.at(plan->physical, b) = data.at(plan->copy_from, b);
            }
        }
    }
    for (uint32_t b = first; b < first + count; ++b) {
        data.at(plan->physical, b) = token;
    }
    return plan;
}

// What block `block` of `vcluster` of `device` reads: its token, 0 for a block that reads as zeros.
inline uint64_t read_block(const ThinPool& pool, DataArea& data, uint32_t device, uint64_t vcluster,
                           uint32_t block) {
    auto m = pool.lookup(device, vcluster);
    EXPECT_TRUE(m.ok()) << (m.ok() ? "" : m.error().message);
    if (!m.ok() || !m->has_value() || !mask_test((*m)->written, block)) {
        return 0;
    }
    return data.at(mask_test((*m)->pending, block) ? (*m)->base : (*m)->physical, block);
}

// Every block of a device, in order.
inline std::vector<uint64_t> read_device(const ThinPool& pool, DataArea& data, uint32_t device) {
    std::vector<uint64_t> out;
    for (const DeviceInfo& d : pool.devices()) {
        if (d.id != device) {
            continue;
        }
        for (uint64_t v = 0; v < d.virtual_clusters; ++v) {
            for (uint32_t b = 0; b < pool.cluster_blocks(); ++b) {
                out.push_back(read_block(pool, data, device, v, b));
            }
        }
    }
    return out;
}

} // namespace ispace::volume::thin::testing
