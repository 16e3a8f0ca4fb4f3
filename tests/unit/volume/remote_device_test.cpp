// RemoteDevice against a real iSCSI target in this process: the block I/O contract, errors as -errno,
// the events (resized on CAPACITY DATA HAS CHANGED, failed when the session gives up), reconnection, and
// the persistent-reservation helpers a data-space fences its members with.
#include "volume/remote_device.hpp"

#include "initiator/internals.hpp"
#include "scsi_spec/opcodes.hpp"
#include "scsi_spec/sam.hpp"
#include "volume_test_util.hpp"

#include <gtest/gtest.h>

#include <atomic>

namespace ispace::volume {
namespace {

using backstore::IoOp;
using namespace std::chrono_literals;
using test::random_bytes;

class Events final : public backstore::DeviceObserver {
public:
    void device_event(backstore::DeviceEvent event) override {
        if (event == backstore::DeviceEvent::resized) {
            ++resized;
        } else if (event == backstore::DeviceEvent::failed) {
            ++failed;
        }
    }
    std::atomic<int> resized{0};
    std::atomic<int> failed{0};
};

// Requests are submitted on reactors of their own (as the SCSI engine or the volume layer would), while
// the initiator runs on its own: every completion crosses back by post().
class RemoteDeviceTest : public ::testing::Test {
protected:
    RemoteDeviceTest() : submitters(2), submitter(submitters.at(1)) { submitters.start(); }
    ~RemoteDeviceTest() override { submitters.stop(); }

    std::unique_ptr<RemoteDevice> open(const std::string& url, bool member = false) {
        RemoteOptions options;
        options.url = url;
        options.member = member;
        auto device = RemoteDevice::open(initiator, options);
        EXPECT_TRUE(device) << (device ? "" : device.error().message);
        return device ? std::move(*device) : nullptr;
    }

    test::TestTarget target{{"memory:64M", "memory:16M,block=4096"}};
    initiator::Initiator initiator{initiator::InitiatorOptions{.threads = 2}};
    net::ReactorGroup submitters;
    test::Submitter submitter;
};

TEST_F(RemoteDeviceTest, GeometryAndFeaturesComeFromTheTarget) {
    auto device = open(target.url(0));
    ASSERT_TRUE(device);
    EXPECT_EQ(device->kind(), "iscsi");
    EXPECT_EQ(device->geometry().block_size, 512u);
    EXPECT_EQ(device->geometry().bytes(), 64u << 20);
    EXPECT_TRUE(device->features().unmap);
    EXPECT_TRUE(device->features().write_zeroes);
    EXPECT_TRUE(device->features().thin);
    EXPECT_EQ(device->describe(), target.url(0));
    auto big = open(target.url(1));
    ASSERT_TRUE(big);
    EXPECT_EQ(big->geometry().block_size, 4096u);
    EXPECT_NE(big->identity(), device->identity());
    // The same LUN has the same identity from another session.
    EXPECT_EQ(open(target.url(0))->identity(), device->identity());
}

TEST_F(RemoteDeviceTest, WritesAndReadsRoundTripWithFuaAndFlush) {
    auto device = open(target.url(0));
    ASSERT_TRUE(device);
    auto data = random_bytes(256 << 10, 1);
    EXPECT_EQ(submitter.write(*device, 1 << 20, data, true), 0);
    EXPECT_EQ(submitter.simple(*device, IoOp::flush), 0);
    std::vector<uint8_t> back(data.size());
    EXPECT_EQ(submitter.read(*device, 1 << 20, back), 0);
    EXPECT_EQ(back, data);
    // Past the end: EINVAL, without a command sent.
    std::vector<uint8_t> beyond(4096);
    EXPECT_EQ(submitter.read(*device, (64u << 20) - 512, beyond), -EINVAL);
    // Misaligned.
    std::vector<uint8_t> odd(512);
    EXPECT_EQ(submitter.read(*device, 100, odd), -EINVAL);
}

TEST_F(RemoteDeviceTest, RequestsLargerThanTheTransferLimitAreSplit) {
    test::TestTarget small({"memory:32M"}, "iqn.2026-11.org.ispace:small-transfer", 2, 64 << 10);
    auto device = open(small.url(0));
    ASSERT_TRUE(device);
    auto data = random_bytes((1 << 20) + 4096, 2); // 17 commands of at most 64 KiB
    EXPECT_EQ(submitter.write(*device, 8192, data), 0);
    std::vector<uint8_t> back(data.size());
    EXPECT_EQ(submitter.read(*device, 8192, back), 0);
    EXPECT_EQ(back, data);
}

TEST_F(RemoteDeviceTest, SharedBufferWritesSendTheBufferItself) {
    auto device = open(target.url(0));
    ASSERT_TRUE(device);
    auto data = random_bytes(64 << 10, 3);
    Buffer shared = Buffer::allocate(data.size());
    std::memcpy(shared.data(), data.data(), data.size());
    std::promise<int> result;
    backstore::IoRequest request;
    request.op = IoOp::write;
    request.offset = 4096;
    request.length = data.size();
    request.done = [&](int error) { result.set_value(error); };
    submitter.reactor().post([&] { device->submit_shared(request, shared); });
    EXPECT_EQ(result.get_future().get(), 0);
    std::vector<uint8_t> back(data.size());
    EXPECT_EQ(submitter.read(*device, 4096, back), 0);
    EXPECT_EQ(back, data);
}

// A write whose caller hands its data as a Buffer (IoRequest::data) is sent from that Buffer — here the
// iovec says something else, which must not reach the target — in slices where the request is split,
// and the Buffer's memory is given back only once the device has let go of it.
TEST_F(RemoteDeviceTest, AWriteWithItsDataInABufferIsSentFromThatBuffer) {
    test::TestTarget small({"memory:32M"}, "iqn.2026-11.org.ispace:buffer-transfer", 2, 64 << 10);
    auto device = open(small.url(0));
    ASSERT_TRUE(device);
    auto data = random_bytes((1 << 20) + 4096, 5); // 17 commands of at most 64 KiB
    std::vector<uint8_t> memory = data;
    std::atomic<int> released{0};
    std::vector<uint8_t> other(data.size(), 0xee);
    iovec iov{other.data(), other.size()};
    std::promise<int> result;
    backstore::IoRequest request;
    request.op = IoOp::write;
    request.offset = 8192;
    request.length = data.size();
    request.iov = &iov;
    request.iovcnt = 1;
    request.data = Buffer::wrap(
        memory.data(), memory.size(),
        [](void* context, uint8_t*) { static_cast<std::atomic<int>*>(context)->fetch_add(1); }, &released);
    request.done = [&](int error) { result.set_value(error); };
    submitter.reactor().post([&] { device->submit(request); });
    EXPECT_EQ(result.get_future().get(), 0);
    EXPECT_EQ(released.load(), 0) << "the request still holds it";
    request.data.reset(); // the test thread may drop it: the hook runs wherever the last one goes
    for (int i = 0; i < 500 && released.load() == 0; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    EXPECT_EQ(released.load(), 1) << "given back once the device let go";
    std::vector<uint8_t> back(data.size());
    EXPECT_EQ(submitter.read(*device, 8192, back), 0);
    EXPECT_EQ(back, data);
}

// A read's observer (IoRequest::observer) is told of every byte once, in order, with the bytes that
// the read returns, before it completes: on the path that receives into the caller's memory (large
// reads) and on the one that copies out of a buffer of the device's (small). A read split into several
// commands does not tell it (their Data-In may land on several threads at once).
TEST_F(RemoteDeviceTest, AReadTellsItsObserverOfEveryByteOnceInOrder) {
    struct Recorder final : DataObserver {
        void landed(uint64_t offset, const uint8_t* p, size_t n) override {
            if (offset != seen.size()) {
                in_order = false;
            }
            seen.insert(seen.end(), p, p + n);
            ++calls;
        }
        std::vector<uint8_t> seen;
        bool in_order = true;
        int calls = 0;
    };
    auto read_observed = [&](RemoteDevice& device, uint64_t offset, std::vector<uint8_t>& back, Recorder& r) {
        iovec iov{back.data(), back.size()};
        std::promise<int> result;
        backstore::IoRequest request;
        request.op = IoOp::read;
        request.offset = offset;
        request.length = back.size();
        request.iov = &iov;
        request.iovcnt = 1;
        request.observer = &r;
        request.done = [&](int error) { result.set_value(error); };
        submitter.reactor().post([&] { device.submit(request); });
        return result.get_future().get();
    };
    auto device = open(target.url(0));
    ASSERT_TRUE(device);
    auto data = random_bytes(1 << 20, 6);
    ASSERT_EQ(submitter.write(*device, 2 << 20, data), 0);
    for (size_t length : {size_t(1) << 20, size_t(16) << 10}) {
        Recorder r;
        std::vector<uint8_t> back(length);
        ASSERT_EQ(read_observed(*device, 2 << 20, back, r), 0);
        EXPECT_TRUE(std::equal(back.begin(), back.end(), data.begin()));
        EXPECT_TRUE(r.in_order) << length;
        EXPECT_EQ(r.seen, back) << length;
        EXPECT_GE(r.calls, 1);
    }
    test::TestTarget small({"memory:32M"}, "iqn.2026-11.org.ispace:observed-split", 2, 64 << 10);
    auto split = open(small.url(0));
    ASSERT_TRUE(split);
    ASSERT_EQ(submitter.write(*split, 0, data), 0);
    Recorder r;
    std::vector<uint8_t> back(data.size());
    ASSERT_EQ(read_observed(*split, 0, back, r), 0);
    EXPECT_EQ(back, data);
    EXPECT_EQ(r.calls, 0);
}

TEST_F(RemoteDeviceTest, UnmapAndWriteZeroesReadBackAsZeroes) {
    auto device = open(target.url(1));
    ASSERT_TRUE(device);
    auto data = random_bytes(2 << 20, 4);
    ASSERT_EQ(submitter.write(*device, 0, data), 0);
    EXPECT_EQ(submitter.simple(*device, IoOp::unmap, 0, 1 << 20), 0);
    EXPECT_EQ(submitter.simple(*device, IoOp::write_zeroes, 1 << 20, 64 << 10), 0);
    std::vector<uint8_t> back(data.size());
    ASSERT_EQ(submitter.read(*device, 0, back), 0);
    std::vector<uint8_t> expected = data;
    std::fill(expected.begin(), expected.begin() + (1 << 20) + (64 << 10), 0);
    EXPECT_EQ(back, expected);
}

TEST_F(RemoteDeviceTest, ABadLunIsNamedWithTheLunsTheTargetHas) {
    RemoteOptions options;
    options.url = target.url(7);
    auto device = RemoteDevice::open(initiator, options);
    ASSERT_FALSE(device);
    EXPECT_NE(device.error().message.find("no LUN 7"), std::string::npos) << device.error().message;
    EXPECT_NE(device.error().message.find("0, 1"), std::string::npos) << device.error().message;
    options.url = "iscsi://127.0.0.1:" + std::to_string(target.port()) + "/" + target.iqn();
    device = RemoteDevice::open(initiator, options);
    ASSERT_FALSE(device);
    EXPECT_NE(device.error().message.find("names no LUN"), std::string::npos) << device.error().message;
}

TEST_F(RemoteDeviceTest, CapacityChangeRaisesResized) {
    auto device = open(target.url(0));
    ASSERT_TRUE(device);
    Events events;
    device->subscribe(&events);
    ASSERT_TRUE(target.runtime().resize_lun(target.iqn(), 0, 96u << 20, false));
    // The next command meets CAPACITY DATA HAS CHANGED, is sent again, and the capacity is read again.
    std::vector<uint8_t> back(4096);
    EXPECT_EQ(submitter.read(*device, 0, back), 0);
    EXPECT_TRUE(test::eventually([&] { return events.resized.load() == 1; }));
    EXPECT_EQ(device->geometry().bytes(), 96u << 20);
    EXPECT_EQ(submitter.read(*device, (96u << 20) - 4096, back), 0);
    device->unsubscribe(&events);
}

TEST_F(RemoteDeviceTest, AGivenUpSessionFailsTheDeviceAndReconnectBringsItBack) {
    test::TempDir dir;
    std::string spec = dir.file("lun.img") + ",size=8M";
    test::TestTarget file_target({spec}, "iqn.2026-11.org.ispace:comes-and-goes");
    RemoteOptions options;
    options.url = file_target.url(0);
    options.member = true;
    initiator::Timeouts quick = member_timeouts();
    quick.recovery = 300ms;
    options.timeouts = quick;
    auto opened = RemoteDevice::open(initiator, options);
    ASSERT_TRUE(opened) << opened.error().message;
    auto& device = **opened;
    Events events;
    device.subscribe(&events);
    auto data = random_bytes(64 << 10, 5);
    ASSERT_EQ(submitter.write(device, 0, data), 0);

    // The target goes away: its sessions are closed and logins refused.
    ASSERT_TRUE(file_target.runtime().remove_target(file_target.iqn()));
    std::vector<uint8_t> back(data.size());
    EXPECT_EQ(submitter.read(device, 0, back), -EIO);
    EXPECT_TRUE(device.failed());
    EXPECT_EQ(events.failed.load(), 1);
    // Failed: requests fail at once, without the network.
    auto t0 = std::chrono::steady_clock::now();
    EXPECT_EQ(submitter.read(device, 0, back), -EIO);
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 1s);

    // Reconnect fails while the target is away, then works once it is back.
    std::promise<Result<void>> first;
    device.reconnect([&](Result<void> r) { first.set_value(std::move(r)); });
    EXPECT_FALSE(first.get_future().get());
    iscsi_target::TargetConfig again;
    again.iqn = file_target.iqn();
    auto parsed = file_target.runtime().backstores().parse(spec);
    ASSERT_TRUE(parsed);
    again.luns.push_back({0, spec, std::move(*parsed)});
    ASSERT_TRUE(file_target.runtime().add_target(again));
    std::promise<Result<void>> second;
    device.reconnect([&](Result<void> r) { second.set_value(std::move(r)); });
    auto reconnected = second.get_future().get();
    ASSERT_TRUE(reconnected) << reconnected.error().message;
    EXPECT_FALSE(device.failed());
    EXPECT_EQ(submitter.read(device, 0, back), 0);
    EXPECT_EQ(back, data);
    device.unsubscribe(&events);
}

TEST_F(RemoteDeviceTest, ReservationsFenceAnotherHolderAndPreemptAndAbortTakesOver) {
    auto a = open(target.url(0));
    auto b = open(target.url(0)); // another session: another I_T nexus, as another host would be
    ASSERT_TRUE(a && b);
    const uint64_t key_a = 0xaaaa0001, key_b = 0xbbbb0002;
    ASSERT_TRUE(a->register_key_sync(key_a));
    ASSERT_TRUE(a->reserve_sync());
    auto reservation = b->read_reservation_sync();
    ASSERT_TRUE(reservation) << reservation.error().message;
    EXPECT_TRUE(reservation->reserved);
    EXPECT_EQ(reservation->key, key_a);
    EXPECT_EQ(reservation->type, scsi::pr::write_exclusive_registrants_only);

    auto data = random_bytes(8192, 6);
    EXPECT_EQ(submitter.write(*a, 0, data), 0);
    // Not registered: b may read but not write, and the error is not an I/O error.
    EXPECT_EQ(submitter.write(*b, 0, data), -EBADE);
    std::vector<uint8_t> back(data.size());
    EXPECT_EQ(submitter.read(*b, 0, back), 0);
    EXPECT_EQ(back, data);
    // Reserving again is harmless for the holder, refused for another.
    EXPECT_TRUE(a->reserve_sync());
    ASSERT_TRUE(b->register_key_sync(key_b));
    auto refused = b->reserve_sync();
    EXPECT_FALSE(refused);

    auto keys = b->read_keys_sync();
    ASSERT_TRUE(keys);
    EXPECT_EQ(keys->size(), 2u);

    // Takeover: b preempts a; a's writes now conflict, b's go through.
    ASSERT_TRUE(b->preempt_and_abort_sync(key_a));
    EXPECT_EQ(submitter.write(*a, 0, data), -EBADE);
    EXPECT_EQ(submitter.write(*b, 0, data), 0);
    reservation = a->read_reservation_sync();
    ASSERT_TRUE(reservation);
    EXPECT_EQ(reservation->key, key_b);
    keys = a->read_keys_sync();
    ASSERT_TRUE(keys);
    EXPECT_EQ(*keys, std::vector<uint64_t>{key_b});
    EXPECT_TRUE(b->release_sync());
    EXPECT_TRUE(b->register_key_sync(0));
}

TEST_F(RemoteDeviceTest, SynchronousHelpersRefuseAReactorThread) {
    auto device = open(target.url(0));
    ASSERT_TRUE(device);
    Result<std::vector<uint64_t>> keys = make_error("not run");
    test::on_reactor(submitter.reactor(), [&] { keys = device->read_keys_sync(); });
    ASSERT_FALSE(keys);
    EXPECT_EQ(keys.error().code, EDEADLK);
}

TEST(RemoteKind, ParsesUrlsAndMasksSecrets) {
    backstore::Registry registry;
    initiator::Initiator* none = nullptr;
    register_remote_kind(registry, [none]() -> initiator::Initiator& { return *none; });
    backstore::register_builtin_kinds(registry);
    auto spec = registry.parse("iscsi://alice%s3cret@127.0.0.1:3261/iqn.2026-11.org.x:t/3");
    ASSERT_TRUE(spec) << spec.error().message;
    EXPECT_EQ((*spec)->kind(), "iscsi");
    EXPECT_EQ((*spec)->describe().find("s3cret"), std::string::npos) << (*spec)->describe();
    auto bad = registry.parse("iscsi://alice%s3cret@127.0.0.1:99999/iqn.2026-11.org.x:t/3");
    ASSERT_FALSE(bad);
    EXPECT_EQ(bad.error().message.find("s3cret"), std::string::npos) << bad.error().message;
    auto no_lun = registry.parse("iscsi://127.0.0.1/iqn.2026-11.org.x:t");
    ASSERT_FALSE(no_lun);
    EXPECT_NE(no_lun.error().message.find("names no LUN"), std::string::npos);
    // Not ours: the file kind still reads paths.
    auto file = registry.parse("/tmp/x.img,size=1M");
    ASSERT_TRUE(file);
    EXPECT_EQ((*file)->kind(), "file");
}

TEST(RemoteInterpret, StatusesAndSenseBecomeErrnos) {
    auto with_sense = [](uint8_t key, uint16_t code) {
        initiator::Response r;
        r.status = uint8_t(scsi::Status::check_condition);
        r.sense = {0x70, 0, key, 0, 0, 0, 0, 10, 0, 0, 0, 0, uint8_t(code >> 8), uint8_t(code), 0, 0, 0, 0};
        return r;
    };
    initiator::Response good;
    EXPECT_EQ(interpret(good).error, 0);
    initiator::Response conflict;
    conflict.status = uint8_t(scsi::Status::reservation_conflict);
    EXPECT_EQ(interpret(conflict).error, -EBADE);
    initiator::Response busy;
    busy.status = uint8_t(scsi::Status::busy);
    EXPECT_TRUE(interpret(busy).retry);
    initiator::Response lost;
    lost.error = make_error("gave up", ETIMEDOUT);
    EXPECT_EQ(interpret(lost).error, -EIO);
    EXPECT_TRUE(interpret(lost).transport);
    EXPECT_EQ(interpret(with_sense(0x07, scsi::asc::space_allocation_failed_write_protect)).error, -ENOSPC);
    EXPECT_EQ(interpret(with_sense(0x07, scsi::asc::write_protected)).error, -EROFS);
    EXPECT_EQ(interpret(with_sense(0x03, scsi::asc::unrecovered_read_error)).error, -EIO);
    EXPECT_EQ(interpret(with_sense(0x05, scsi::asc::lba_out_of_range)).error, -EINVAL);
    EXPECT_EQ(interpret(with_sense(0x05, scsi::asc::invalid_command_operation_code)).error, -EOPNOTSUPP);
    auto ua = interpret(with_sense(0x06, scsi::asc::capacity_data_has_changed));
    EXPECT_TRUE(ua.retry);
    EXPECT_TRUE(ua.capacity_changed);
    EXPECT_FALSE(interpret(with_sense(0x06, 0x2900)).capacity_changed);
    EXPECT_EQ(interpret(with_sense(0x01, 0x1700)).error, 0); // RECOVERED ERROR: the command succeeded
}

} // namespace
} // namespace ispace::volume
