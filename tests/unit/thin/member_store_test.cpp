// The thin metadata area on real member devices (memory backstores driven by a reactor): every member
// holds the same pages, and a page damaged on one member is read from another.
#include "backstore/memory/memory_device.hpp"
#include "net/reactor.hpp"
#include "volume/member_io.hpp"
#include "volume/thin/member_store.hpp"
#include "volume/thin/pool.hpp"

#include <gtest/gtest.h>

#include <cerrno>
#include <memory>

using namespace ispace;
using namespace ispace::volume::thin;

namespace {

constexpr uint64_t area = 64 << 10;
constexpr uint64_t pages = 256;

struct Members {
    Members() : group(1) {
        group.start();
        for (int i = 0; i < 2; ++i) {
            devices.push_back(std::make_unique<backstore::MemoryDevice>(8 << 20, 512));
        }
    }
    MemberMetadataStore store() {
        std::vector<MemberMetadataStore::Member> m;
        for (auto& d : devices) {
            m.push_back({d.get(), area});
        }
        auto s = MemberMetadataStore::make(group.at(0), std::move(m), pages);
        EXPECT_TRUE(s.ok()) << (s.ok() ? "" : s.error().message);
        return std::move(*s);
    }
    std::vector<uint8_t> page(int member, uint64_t p) {
        std::vector<uint8_t> b(page_size);
        EXPECT_EQ(
            volume::member_io(group.at(0), *devices[member], backstore::IoOp::read, area + p * page_size, b),
            0);
        return b;
    }

    net::ReactorGroup group;
    std::vector<std::unique_ptr<backstore::MemoryDevice>> devices;
};

} // namespace

TEST(ThinMemberStore, EveryMemberHoldsTheMapAndADamagedPageIsReadFromAnother) {
    Members members;
    MemberMetadataStore store = members.store();
    {
        auto pool = ThinPool::format(store, PoolGeometry{1 << 20, 100});
        ASSERT_TRUE(pool.ok()) << pool.error().message;
        uint32_t dev = *pool->create_device("vol", 1000);
        ASSERT_TRUE(pool->write(dev, 10, 0, 4).ok());
        ASSERT_TRUE(pool->snapshot(dev, "vol@1").ok());
        ASSERT_TRUE(pool->commit().ok());
    }
    for (uint64_t p = 0; p < 8; ++p) {
        EXPECT_EQ(members.page(0, p), members.page(1, p)) << "page " << p;
    }
    // Damage every page of member 0's area: member 1 serves them all.
    std::vector<uint8_t> junk(pages * page_size, 0xee);
    ASSERT_EQ(volume::member_io(members.group.at(0), *members.devices[0], backstore::IoOp::write, area, junk),
              0);
    auto pool = ThinPool::open(store, 100);
    ASSERT_TRUE(pool.ok()) << pool.error().message;
    ASSERT_TRUE(pool->check().ok());
    auto snap = pool->find_device("vol@1");
    ASSERT_TRUE(snap.has_value());
    auto m = pool->lookup(*snap, 10);
    ASSERT_TRUE(m.ok() && m->has_value());
    EXPECT_EQ(mask_count((*m)->written), 4u);
    // Both damaged: an error naming the problem, not a pool.
    ASSERT_EQ(volume::member_io(members.group.at(0), *members.devices[1], backstore::IoOp::write, area, junk),
              0);
    auto none = ThinPool::open(store, 100);
    ASSERT_FALSE(none.ok());
    EXPECT_EQ(none.error().code, EILSEQ);
}

TEST(ThinMemberStore, TheAreaMustFitEveryMember) {
    Members members;
    auto misaligned =
        MemberMetadataStore::make(members.group.at(0), {{members.devices[0].get(), 512}}, pages);
    EXPECT_EQ(misaligned.error().code, EINVAL);
    auto too_big = MemberMetadataStore::make(members.group.at(0), {{members.devices[0].get(), area}}, 4096);
    EXPECT_EQ(too_big.error().code, ENOSPC);
    auto missing = MemberMetadataStore::make(members.group.at(0), {{nullptr, area}}, pages);
    EXPECT_EQ(missing.error().code, ENODEV);
}
