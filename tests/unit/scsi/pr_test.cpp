// Reservations: the persistent reservation state machine (REGISTER, REGISTER AND IGNORE EXISTING KEY,
// RESERVE, RELEASE, CLEAR, PREEMPT, PREEMPT AND ABORT, REGISTER AND MOVE) for every type, PRIN data,
// the conflict table on the command path, SPC-2 RESERVE/RELEASE and how the two exclude each other,
// unit attentions, and APTPL persistence across a restart. Expectations follow SPC-4 and what
// libiscsi's test_prout_*, test_prin_* and test_reserve6_* check.
#include "harness.hpp"

#include "scsi/pr.hpp"

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fmt/format.h>
#include <fstream>
#include <unistd.h>

using namespace ispace;
using namespace ispace::scsi;
using namespace ispace::scsi::test;

namespace {

constexpr uint64_t key_a = 0xa1a1a1a1a1a1a1a1ull;
constexpr uint64_t key_b = 0xb2b2b2b2b2b2b2b2ull;
constexpr uint64_t key_c = 0xc3c3c3c3c3c3c3c3ull;

std::vector<uint8_t> parameters(uint64_t key, uint64_t sa_key, uint8_t flags = 0) {
    std::vector<uint8_t> p(24, 0);
    store_be64(&p[0], key);
    store_be64(&p[8], sa_key);
    p[20] = flags;
    return p;
}

constexpr uint8_t aptpl_bit = 0x01;
constexpr uint8_t all_tg_pt_bit = 0x04;
constexpr uint8_t spec_i_pt_bit = 0x08;

struct Keys {
    uint32_t generation = 0;
    std::vector<uint64_t> keys;
};

// Three initiators on target port 1 (a, b, and a second session of a's initiator with another ISID)
// and a on target port 2.
class PrTest : public ::testing::Test {
public:
    explicit PrTest(LuConfig config = {}) : h(config) {
        a = &h.nexus;
        b = add("iqn.1994-05.com.example:host2", "0x23d000000002", 1);
        a2 = add("iqn.1994-05.com.example:host1", "0x23d000000099", 1);
        a_port2 = add("iqn.1994-05.com.example:host1", "0x23d000000001", 2);
        h.target.set_port_groups({PortGroup{1, {1}}, PortGroup{2, {2}}});
    }

    Nexus* add(const std::string& name, const std::string& isid, uint16_t port) {
        auto n = std::make_unique<Nexus>(Harness::make_nexus(uint64_t(nexuses.size() + 2), name, isid));
        n->relative_target_port = port;
        n->target_port_group = port;
        n->target_port = std::string(Harness::target_name) + fmt::format(",t,0x{:04x}", port);
        h.target.nexus_added(*n);
        Nexus* raw = n.get();
        nexuses.push_back(std::move(n));
        clear_ua(*raw);
        return raw;
    }

    std::unique_ptr<TestTask> run(const Nexus& n, const std::vector<uint8_t>& cdb, uint32_t length = 0,
                                  std::vector<uint8_t> out = {}) {
        bool writes = !out.empty();
        auto t = h.make_task(cdb, writes ? uint32_t(out.size()) : length, !writes, 0, &n);
        if (writes) {
            t->data_out = true;
            t->out = std::move(out);
        }
        h.exec(*t);
        return t;
    }

    void clear_ua(const Nexus& n) {
        for (int i = 0; i < 8; ++i) {
            if (tur(n)->status == Status::good) {
                return;
            }
        }
    }

    std::unique_ptr<TestTask> tur(const Nexus& n) { return run(n, cdb_bytes({0x00, 0, 0, 0, 0, 0})); }
    std::unique_ptr<TestTask> read(const Nexus& n) { return run(n, rw10(op::read_10, 1, 1), 512); }
    std::unique_ptr<TestTask> write(const Nexus& n) {
        return run(n, rw10(op::write_10, 1, 1), 0, std::vector<uint8_t>(512, 0x5a));
    }

    std::unique_ptr<TestTask> prout(const Nexus& n, uint8_t sa, uint8_t type, std::vector<uint8_t> params,
                                    uint8_t scope = 0) {
        std::vector<uint8_t> c(10, 0);
        c[0] = op::persistent_reserve_out;
        c[1] = sa;
        c[2] = uint8_t(scope << 4 | type);
        store_be32(&c[5], uint32_t(params.size()));
        return run(n, c, 0, std::move(params));
    }
    std::unique_ptr<TestTask> reg(const Nexus& n, uint64_t key, uint64_t sa_key, uint8_t flags = 0) {
        return prout(n, pr::register_key, 0, parameters(key, sa_key, flags));
    }
    std::unique_ptr<TestTask> reg_ignore(const Nexus& n, uint64_t sa_key, uint8_t flags = 0) {
        return prout(n, pr::register_and_ignore_existing_key, 0, parameters(0, sa_key, flags));
    }
    std::unique_ptr<TestTask> reserve(const Nexus& n, uint64_t key, uint8_t type) {
        return prout(n, pr::reserve, type, parameters(key, 0));
    }
    std::unique_ptr<TestTask> release(const Nexus& n, uint64_t key, uint8_t type) {
        return prout(n, pr::release, type, parameters(key, 0));
    }

    std::unique_ptr<TestTask> prin(const Nexus& n, uint8_t sa, uint16_t allocation = 4096) {
        std::vector<uint8_t> c(10, 0);
        c[0] = op::persistent_reserve_in;
        c[1] = sa;
        store_be16(&c[7], allocation);
        return run(n, c, allocation);
    }

    Keys read_keys(const Nexus& n) {
        auto t = prin(n, pr::read_keys);
        EXPECT_EQ(t->status, Status::good);
        Keys k;
        auto d = t->received();
        if (d.size() < 8) {
            return k;
        }
        k.generation = load_be32(&d[0]);
        uint32_t length = load_be32(&d[4]);
        for (size_t at = 8; at + 8 <= d.size() && at < 8 + length; at += 8) {
            k.keys.push_back(load_be64(&d[at]));
        }
        return k;
    }

    struct Held {
        bool reserved = false;
        uint64_t key = 0;
        uint8_t type = 0;
    };
    Held read_reservation(const Nexus& n) {
        auto t = prin(n, pr::read_reservation);
        EXPECT_EQ(t->status, Status::good);
        auto d = t->received();
        Held r;
        if (d.size() >= 24 && load_be32(&d[4]) == 16) {
            r.reserved = true;
            r.key = load_be64(&d[8]);
            r.type = d[21] & 0x0f;
        }
        return r;
    }

    std::optional<uint16_t> pending_ua(const Nexus& n) {
        auto t = tur(n);
        if (t->status == Status::check_condition && t->sense_data() &&
            t->sense_data()->key == SenseKey::unit_attention) {
            return t->sense_data()->code;
        }
        return std::nullopt;
    }

    Harness h;
    Nexus* a = nullptr;
    Nexus* b = nullptr;
    Nexus* a2 = nullptr;
    Nexus* a_port2 = nullptr;
    std::vector<std::unique_ptr<Nexus>> nexuses;
};

bool conflicted(const TestTask& t) {
    return t.status == Status::reservation_conflict;
}

// --- REGISTER / REGISTER AND IGNORE EXISTING KEY ---------------------------------------------------

TEST_F(PrTest, RegisterReadKeysUnregister) {
    EXPECT_TRUE(read_keys(*a).keys.empty());
    EXPECT_EQ(reg(*a, 0, key_a)->status, Status::good);
    Keys k = read_keys(*b);
    EXPECT_EQ(k.generation, 1u);
    ASSERT_EQ(k.keys.size(), 1u);
    EXPECT_EQ(k.keys[0], key_a);

    // Re-registering needs the current key as RESERVATION KEY (libiscsi prout_reregister_key_fails).
    EXPECT_TRUE(conflicted(*reg(*a, 0, key_b)));
    EXPECT_EQ(reg(*a, key_a, key_b)->status, Status::good);
    EXPECT_EQ(read_keys(*a).keys, std::vector<uint64_t>{key_b});
    // SERVICE ACTION RESERVATION KEY 0 unregisters.
    EXPECT_EQ(reg(*a, key_b, 0)->status, Status::good);
    k = read_keys(*a);
    EXPECT_TRUE(k.keys.empty());
    EXPECT_EQ(k.generation, 3u);
}

TEST_F(PrTest, RegisterWhileUnregisteredWithAKeyConflicts) {
    EXPECT_TRUE(conflicted(*reg(*a, key_c, key_a)));
    // Unregistering what is not registered is GOOD and changes nothing, not even the generation.
    EXPECT_EQ(reg(*a, 0, 0)->status, Status::good);
    EXPECT_EQ(read_keys(*a).generation, 0u);
}

TEST_F(PrTest, RegisterAndIgnoreReplacesAnyKey) {
    EXPECT_EQ(reg_ignore(*a, key_a)->status, Status::good);
    EXPECT_EQ(reg_ignore(*a, key_b)->status, Status::good);
    EXPECT_EQ(read_keys(*a).keys, std::vector<uint64_t>{key_b});
    EXPECT_EQ(reg_ignore(*a, 0)->status, Status::good);
    EXPECT_TRUE(read_keys(*a).keys.empty());
}

TEST_F(PrTest, EachInitiatorPortAndTargetPortIsItsOwnNexus) {
    EXPECT_EQ(reg_ignore(*a, key_a)->status, Status::good);
    // The same initiator name with another ISID, or through another target port, is not registered.
    EXPECT_TRUE(conflicted(*reserve(*a2, key_a, pr::write_exclusive)));
    EXPECT_TRUE(conflicted(*reserve(*a_port2, key_a, pr::write_exclusive)));
    EXPECT_EQ(reg_ignore(*a_port2, key_a)->status, Status::good);
    EXPECT_EQ(read_keys(*a).keys.size(), 2u);
}

TEST_F(PrTest, AllTargetPortsRegistersOnEveryPort) {
    EXPECT_EQ(reg(*a, 0, key_a, all_tg_pt_bit)->status, Status::good);
    EXPECT_EQ(read_keys(*a).keys, (std::vector<uint64_t>{key_a, key_a}));
    // Through port 2 the initiator port is registered too and can reserve.
    EXPECT_EQ(reserve(*a_port2, key_a, pr::write_exclusive)->status, Status::good);
    auto held = read_reservation(*b);
    EXPECT_TRUE(held.reserved);
    EXPECT_EQ(held.key, key_a);
}

TEST_F(PrTest, SpecifiedInitiatorPortsAreRegisteredToo) {
    std::vector<uint8_t> p = parameters(0, key_a, spec_i_pt_bit);
    std::vector<uint8_t> tid = pr::transport_id(b->initiator_port);
    p.resize(28);
    store_be32(&p[24], uint32_t(tid.size()));
    p.insert(p.end(), tid.begin(), tid.end());
    EXPECT_EQ(prout(*a, pr::register_key, 0, p)->status, Status::good);
    EXPECT_EQ(read_keys(*a).keys.size(), 2u);
    // b is registered with a's key now.
    EXPECT_EQ(reserve(*b, key_a, pr::exclusive_access)->status, Status::good);

    // SPEC_I_PT from a registered I_T nexus is refused.
    store_be64(&p[0], key_a);
    EXPECT_TRUE(has_sense(*prout(*a, pr::register_key, 0, p), SenseKey::illegal_request,
                          asc::invalid_field_in_parameter_list));
    // So is a device TransportID (an iSCSI name without ISID) from an unregistered one.
    std::vector<uint8_t> q = parameters(0, key_c, spec_i_pt_bit);
    std::vector<uint8_t> device = pr::transport_id("iqn.2000-01.com.example:other");
    device[0] = 0x05;
    q.resize(28);
    store_be32(&q[24], uint32_t(device.size()));
    q.insert(q.end(), device.begin(), device.end());
    EXPECT_TRUE(has_sense(*prout(*a2, pr::register_key, 0, q), SenseKey::illegal_request,
                          asc::invalid_field_in_parameter_list));
}

TEST_F(PrTest, SpecIPtOnlyWithRegister) {
    EXPECT_TRUE(has_sense(*reg_ignore(*a, key_a, spec_i_pt_bit), SenseKey::illegal_request,
                          asc::invalid_field_in_parameter_list));
}

TEST_F(PrTest, ParameterListLengthMustBe24) {
    std::vector<uint8_t> p = parameters(0, key_a);
    p.push_back(0);
    EXPECT_TRUE(has_sense(*prout(*a, pr::register_key, 0, p), SenseKey::illegal_request,
                          asc::parameter_list_length_error));
    p.resize(20);
    EXPECT_TRUE(has_sense(*prout(*a, pr::register_key, 0, p), SenseKey::illegal_request,
                          asc::parameter_list_length_error));
}

TEST_F(PrTest, RegistrationsAreBounded) {
    for (size_t i = 0; i < pr::max_registrations; ++i) {
        std::vector<uint8_t> p = parameters(0, key_a, spec_i_pt_bit);
        std::vector<uint8_t> tid =
            pr::transport_id(fmt::format("iqn.2000-01.com.example:x{},i,0x{:012x}", i, i));
        p.resize(28);
        store_be32(&p[24], uint32_t(tid.size()));
        p.insert(p.end(), tid.begin(), tid.end());
        // Each REGISTER adds a's registration (once) and one more.
        auto t = prout(*a, pr::register_key, 0, p);
        if (i == 0) {
            ASSERT_EQ(t->status, Status::good);
        }
        reg(*a, key_a, 0);
        if (t->status != Status::good) {
            EXPECT_TRUE(has_sense(*t, SenseKey::illegal_request, asc::insufficient_registration_resources));
            return;
        }
    }
    FAIL() << "no limit reached";
}

// --- RESERVE / access by type ---------------------------------------------------------------------

struct Access {
    uint8_t type;
    bool registered_reads, registered_writes, unregistered_reads, unregistered_writes;
};

// libiscsi test_prout_reserve_access_*: what a second initiator may do, registered or not.
constexpr Access access_table[] = {
    {pr::exclusive_access, false, false, false, false},
    {pr::write_exclusive, true, false, true, false},
    {pr::exclusive_access_registrants_only, true, true, false, false},
    {pr::write_exclusive_registrants_only, true, true, true, false},
    {pr::exclusive_access_all_registrants, true, true, false, false},
    {pr::write_exclusive_all_registrants, true, true, true, false},
};

TEST_F(PrTest, AccessByReservationType) {
    for (const Access& x : access_table) {
        SCOPED_TRACE(pr::type_name(x.type));
        ASSERT_EQ(reg_ignore(*a, key_a)->status, Status::good);
        ASSERT_EQ(reg_ignore(*b, key_b)->status, Status::good);
        ASSERT_EQ(reserve(*a, key_a, x.type)->status, Status::good);
        auto held = read_reservation(*a);
        EXPECT_TRUE(held.reserved);
        EXPECT_EQ(held.type, x.type);
        EXPECT_EQ(held.key, pr::is_all_registrants(x.type) ? 0 : key_a);

        EXPECT_EQ(read(*a)->status, Status::good);
        EXPECT_EQ(write(*a)->status, Status::good);
        EXPECT_EQ(read(*b)->status == Status::good, x.registered_reads);
        EXPECT_EQ(write(*b)->status == Status::good, x.registered_writes);
        EXPECT_EQ(reg(*b, key_b, 0)->status, Status::good);
        auto r = read(*b);
        EXPECT_EQ(r->status == Status::good, x.unregistered_reads);
        if (r->status != Status::good) {
            EXPECT_TRUE(conflicted(*r));
        }
        EXPECT_EQ(write(*b)->status == Status::good, x.unregistered_writes);
        // Commands the tables allow through any reservation.
        EXPECT_EQ(tur(*b)->status, Status::good);
        EXPECT_EQ(run(*b, cdb_bytes({0x12, 0, 0, 0, 96, 0}), 96)->status, Status::good);
        EXPECT_EQ(run(*b, cdb_bytes({0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0}), 8)->status, Status::good);
        // ... and ones they do not: MODE SENSE, SYNCHRONIZE CACHE.
        EXPECT_TRUE(conflicted(*run(*b, cdb_bytes({0x1a, 0, 0x3f, 0, 255, 0}), 255)));
        EXPECT_TRUE(conflicted(*run(*b, rw10(op::synchronize_cache_10, 0, 0))));
        // PREVENT ALLOW MEDIUM REMOVAL: allowed with PREVENT=0 only.
        EXPECT_EQ(run(*b, cdb_bytes({0x1e, 0, 0, 0, 0, 0}))->status, Status::good);
        EXPECT_TRUE(conflicted(*run(*b, cdb_bytes({0x1e, 0, 0, 0, 1, 0}))));

        EXPECT_EQ(release(*a, key_a, x.type)->status, Status::good);
        EXPECT_FALSE(read_reservation(*a).reserved);
        EXPECT_EQ(reg(*a, key_a, 0)->status, Status::good);
        clear_ua(*a);
        clear_ua(*b);
    }
}

TEST_F(PrTest, ReserveNeedsTheRegisteredKey) {
    EXPECT_TRUE(conflicted(*reserve(*a, key_a, pr::write_exclusive)));
    reg_ignore(*a, key_a);
    EXPECT_TRUE(conflicted(*reserve(*a, key_b, pr::write_exclusive)));
    EXPECT_EQ(reserve(*a, key_a, pr::write_exclusive)->status, Status::good);
    // The holder may repeat it, not change its type; nobody else may reserve.
    EXPECT_EQ(reserve(*a, key_a, pr::write_exclusive)->status, Status::good);
    EXPECT_TRUE(conflicted(*reserve(*a, key_a, pr::exclusive_access)));
    reg_ignore(*b, key_b);
    EXPECT_TRUE(conflicted(*reserve(*b, key_b, pr::write_exclusive)));
    // RESERVE and RELEASE leave the generation alone.
    EXPECT_EQ(read_keys(*a).generation, 2u);
}

TEST_F(PrTest, ReserveChecksScopeAndType) {
    reg_ignore(*a, key_a);
    EXPECT_TRUE(invalid_field(*reserve(*a, key_a, 2), 2, 3));
    EXPECT_TRUE(invalid_field(*prout(*a, pr::reserve, pr::write_exclusive, parameters(key_a, 0), 1), 2, 7));
}

// --- RELEASE ------------------------------------------------------------------------------------

TEST_F(PrTest, ReleaseByNonHolderIsANoOp) {
    reg_ignore(*a, key_a);
    reg_ignore(*b, key_b);
    reserve(*a, key_a, pr::exclusive_access);
    EXPECT_EQ(release(*b, key_b, pr::exclusive_access)->status, Status::good);
    EXPECT_TRUE(read_reservation(*a).reserved);
    // An unregistered I_T nexus gets a conflict.
    EXPECT_TRUE(conflicted(*release(*a2, key_a, pr::exclusive_access)));
}

TEST_F(PrTest, ReleaseOfAnotherTypeIsInvalid) {
    reg_ignore(*a, key_a);
    reserve(*a, key_a, pr::write_exclusive);
    EXPECT_TRUE(has_sense(*release(*a, key_a, pr::exclusive_access), SenseKey::illegal_request,
                          asc::invalid_release_of_persistent_reservation));
    EXPECT_TRUE(read_reservation(*a).reserved);
}

TEST_F(PrTest, ReleasingRegistrantsOnlyTellsTheOtherRegistrants) {
    reg_ignore(*a, key_a);
    reg_ignore(*b, key_b);
    reserve(*a, key_a, pr::write_exclusive_registrants_only);
    EXPECT_EQ(release(*a, key_a, pr::write_exclusive_registrants_only)->status, Status::good);
    EXPECT_EQ(pending_ua(*b), asc::reservations_released);
    EXPECT_EQ(pending_ua(*a), std::nullopt);
    EXPECT_EQ(pending_ua(*a2), std::nullopt); // not registered
}

TEST_F(PrTest, ReleasingWriteExclusiveTellsNobody) {
    reg_ignore(*a, key_a);
    reg_ignore(*b, key_b);
    reserve(*a, key_a, pr::write_exclusive);
    release(*a, key_a, pr::write_exclusive);
    EXPECT_EQ(pending_ua(*b), std::nullopt);
}

// --- reservation ownership when the holder unregisters (test_prout_reserve_ownership_*) ----------

TEST_F(PrTest, HolderUnregisteringReleases) {
    for (uint8_t type : {pr::exclusive_access, pr::write_exclusive, pr::exclusive_access_registrants_only,
                         pr::write_exclusive_registrants_only}) {
        SCOPED_TRACE(pr::type_name(type));
        reg_ignore(*a, key_a);
        reg_ignore(*b, key_b);
        reserve(*a, key_a, type);
        EXPECT_EQ(reg(*a, key_a, 0)->status, Status::good);
        EXPECT_FALSE(read_reservation(*a).reserved);
        EXPECT_EQ(pending_ua(*b), pr::is_registrants_only(type)
                                      ? std::optional<uint16_t>(asc::reservations_released)
                                      : std::nullopt);
        reg(*b, key_b, 0);
        clear_ua(*b);
    }
}

TEST_F(PrTest, AllRegistrantsReservationOutlivesItsCreator) {
    for (uint8_t type : {pr::exclusive_access_all_registrants, pr::write_exclusive_all_registrants}) {
        SCOPED_TRACE(pr::type_name(type));
        reg_ignore(*a, key_a);
        reg_ignore(*b, key_b);
        reserve(*a, key_a, type);
        reg(*a, key_a, 0);
        auto held = read_reservation(*a);
        EXPECT_TRUE(held.reserved);
        EXPECT_EQ(held.key, 0u);
        // b is a holder now and releases it.
        EXPECT_EQ(release(*b, key_b, type)->status, Status::good);
        EXPECT_FALSE(read_reservation(*a).reserved);
        reg(*b, key_b, 0);
    }
    // The last registrant leaving ends it too.
    reg_ignore(*a, key_a);
    reserve(*a, key_a, pr::write_exclusive_all_registrants);
    reg(*a, key_a, 0);
    EXPECT_FALSE(read_reservation(*a).reserved);
}

// --- CLEAR / PREEMPT ------------------------------------------------------------------------------

TEST_F(PrTest, ClearRemovesEverything) {
    reg_ignore(*a, key_a);
    reg_ignore(*b, key_b);
    reserve(*a, key_a, pr::exclusive_access);
    EXPECT_TRUE(conflicted(*prout(*a2, pr::clear, 0, parameters(key_a, 0))));
    EXPECT_EQ(prout(*b, pr::clear, 0, parameters(key_b, 0))->status, Status::good);
    Keys k = read_keys(*a2);
    EXPECT_TRUE(k.keys.empty());
    EXPECT_EQ(k.generation, 3u);
    EXPECT_FALSE(read_reservation(*a2).reserved);
    EXPECT_EQ(pending_ua(*a), asc::reservations_preempted);
    EXPECT_EQ(pending_ua(*b), std::nullopt);
}

TEST_F(PrTest, PreemptRemovesARegistration) {
    // libiscsi test_prout_preempt_rm_reg: no reservation; k1 removed, generation +1, k2 stays.
    reg_ignore(*a, key_a);
    reg_ignore(*b, key_b);
    uint32_t before = read_keys(*a).generation;
    EXPECT_EQ(prout(*b, pr::preempt, pr::exclusive_access, parameters(key_b, key_a))->status, Status::good);
    EXPECT_EQ(pending_ua(*a), asc::registrations_preempted);
    EXPECT_EQ(pending_ua(*b), std::nullopt);
    Keys k = read_keys(*a);
    EXPECT_EQ(k.keys, std::vector<uint64_t>{key_b});
    EXPECT_EQ(k.generation, before + 1);
    // A key nobody holds: conflict.
    EXPECT_TRUE(conflicted(*prout(*b, pr::preempt, pr::exclusive_access, parameters(key_b, key_c))));
    // SARK 0 without an all-registrants reservation: invalid.
    EXPECT_TRUE(has_sense(*prout(*b, pr::preempt, pr::exclusive_access, parameters(key_b, 0)),
                          SenseKey::illegal_request, asc::invalid_field_in_parameter_list));
}

TEST_F(PrTest, PreemptTakesTheReservation) {
    reg_ignore(*a, key_a);
    reg_ignore(*b, key_b);
    reg_ignore(*a2, key_c);
    reserve(*a, key_a, pr::write_exclusive);
    EXPECT_EQ(prout(*b, pr::preempt, pr::exclusive_access, parameters(key_b, key_a))->status, Status::good);
    auto held = read_reservation(*b);
    EXPECT_TRUE(held.reserved);
    EXPECT_EQ(held.key, key_b);
    EXPECT_EQ(held.type, pr::exclusive_access);
    EXPECT_EQ(pending_ua(*a), asc::registrations_preempted);
    // The type changed: the registrant that stayed hears its reservation is gone.
    EXPECT_EQ(pending_ua(*a2), asc::reservations_released);
    EXPECT_TRUE(conflicted(*read(*a)));
    EXPECT_EQ(read(*b)->status, Status::good);
}

TEST_F(PrTest, PreemptAllRegistrantsWithZeroKey) {
    reg_ignore(*a, key_a);
    reg_ignore(*b, key_b);
    reg_ignore(*a2, key_c);
    reserve(*a, key_a, pr::exclusive_access_all_registrants);
    EXPECT_EQ(prout(*b, pr::preempt, pr::write_exclusive, parameters(key_b, 0))->status, Status::good);
    EXPECT_EQ(read_keys(*b).keys, std::vector<uint64_t>{key_b});
    auto held = read_reservation(*b);
    EXPECT_EQ(held.type, pr::write_exclusive);
    EXPECT_EQ(held.key, key_b);
    EXPECT_EQ(pending_ua(*a), asc::registrations_preempted);
    EXPECT_EQ(pending_ua(*a2), asc::registrations_preempted);
}

TEST_F(PrTest, PreemptAndAbortEndsThePreemptedTasks) {
    reg_ignore(*a, key_a);
    reg_ignore(*b, key_b);
    reserve(*a, key_a, pr::write_exclusive);
    // a has a write waiting for its data-out.
    h.fabric.hold_data_out = true;
    auto stuck = h.make_task(rw10(op::write_10, 4, 1), 512, false, 0, a);
    stuck->data_out = true;
    stuck->out.assign(512, 1);
    h.submit(*stuck);
    ASSERT_TRUE(h.run_until([&] { return stuck->fetches > 0; }));
    h.fabric.hold_data_out = false;

    auto t = h.make_task(cdb_bytes({0x5f, pr::preempt_and_abort, pr::exclusive_access, 0, 0, 0, 0, 0, 24, 0}),
                         24, false, 0, b);
    t->data_out = true;
    t->out = parameters(key_b, key_a);
    h.exec(*t);
    EXPECT_EQ(t->status, Status::good);
    ASSERT_TRUE(h.run_until([&] { return stuck->done(); }));
    EXPECT_TRUE(stuck->aborted);
    EXPECT_EQ(stuck->cancels, 1);
    EXPECT_EQ(read_reservation(*b).key, key_b);
}

// --- REGISTER AND MOVE ----------------------------------------------------------------------------

std::vector<uint8_t> move_parameters(uint64_t key, uint64_t sa_key, uint16_t port, const std::string& to,
                                     bool unreg = false) {
    std::vector<uint8_t> p(24, 0);
    store_be64(&p[0], key);
    store_be64(&p[8], sa_key);
    p[17] = unreg ? 0x02 : 0x00;
    store_be16(&p[18], port);
    std::vector<uint8_t> tid = pr::transport_id(to);
    store_be32(&p[20], uint32_t(tid.size()));
    p.insert(p.end(), tid.begin(), tid.end());
    return p;
}

TEST_F(PrTest, RegisterAndMoveHandsTheReservationOver) {
    reg_ignore(*a, key_a);
    // Not the holder: conflict.
    EXPECT_TRUE(conflicted(
        *prout(*a, pr::register_and_move, 0, move_parameters(key_a, key_b, 1, b->initiator_port))));
    reserve(*a, key_a, pr::exclusive_access);
    EXPECT_EQ(prout(*a, pr::register_and_move, 0, move_parameters(key_a, key_b, 1, b->initiator_port, true))
                  ->status,
              Status::good);
    auto held = read_reservation(*b);
    EXPECT_EQ(held.key, key_b);
    EXPECT_EQ(held.type, pr::exclusive_access);
    EXPECT_EQ(read_keys(*b).keys, std::vector<uint64_t>{key_b}); // UNREG removed a
    EXPECT_EQ(read(*b)->status, Status::good);
    EXPECT_TRUE(conflicted(*read(*a)));
}

TEST_F(PrTest, RegisterAndMoveChecksItsDestination) {
    reg_ignore(*a, key_a);
    reserve(*a, key_a, pr::exclusive_access);
    // No such target port.
    EXPECT_TRUE(
        has_sense(*prout(*a, pr::register_and_move, 0, move_parameters(key_a, key_b, 9, b->initiator_port)),
                  SenseKey::illegal_request, asc::invalid_field_in_parameter_list));
    // To itself.
    EXPECT_TRUE(
        has_sense(*prout(*a, pr::register_and_move, 0, move_parameters(key_a, key_b, 1, a->initiator_port)),
                  SenseKey::illegal_request, asc::invalid_field_in_parameter_list));
    // SARK 0.
    EXPECT_TRUE(
        has_sense(*prout(*a, pr::register_and_move, 0, move_parameters(key_a, 0, 1, b->initiator_port)),
                  SenseKey::illegal_request, asc::invalid_field_in_parameter_list));
    // To another target port of the same initiator is fine.
    EXPECT_EQ(
        prout(*a, pr::register_and_move, 0, move_parameters(key_a, key_c, 2, a->initiator_port))->status,
        Status::good);
    EXPECT_EQ(read(*a_port2)->status, Status::good);
    EXPECT_TRUE(conflicted(*read(*a)));
}

// --- PERSISTENT RESERVE IN ------------------------------------------------------------------------

TEST_F(PrTest, ServiceActionRange) {
    for (uint8_t sa = 0; sa < 4; ++sa) {
        EXPECT_EQ(prin(*a, sa)->status, Status::good);
    }
    for (uint8_t sa = 4; sa < 0x20; ++sa) {
        EXPECT_TRUE(invalid_field(*prin(*a, sa), 1)) << int(sa);
    }
}

TEST_F(PrTest, ReadKeysTruncatedKeepsTheLength) {
    reg_ignore(*a, key_a);
    auto t = prin(*a, pr::read_keys, 8);
    ASSERT_EQ(t->received().size(), 8u);
    EXPECT_EQ(load_be32(&t->received()[4]), 8u);
}

TEST_F(PrTest, ReportCapabilities) {
    auto t = prin(*a, pr::report_capabilities);
    ASSERT_EQ(t->received().size(), 8u);
    auto d = t->received();
    EXPECT_EQ(load_be16(&d[0]), 8u);
    EXPECT_EQ(d[2] & 0x01, 0);    // PTPL_C: no state path
    EXPECT_EQ(d[2] & 0x0c, 0x0c); // SIP_C, ATP_C
    EXPECT_EQ(d[3] & 0x80, 0x80); // TMV
    EXPECT_LE((d[3] >> 4) & 7, 5);
    EXPECT_EQ(load_be16(&d[4]), 0xea01); // every type
    // Without a state path APTPL=1 is refused.
    EXPECT_TRUE(has_sense(*reg(*a, 0, key_a, aptpl_bit), SenseKey::illegal_request,
                          asc::invalid_field_in_parameter_list));
}

TEST_F(PrTest, ReadFullStatus) {
    reg_ignore(*a, key_a);
    reg_ignore(*b, key_b);
    reserve(*b, key_b, pr::write_exclusive_registrants_only);
    auto t = prin(*a, pr::read_full_status);
    ASSERT_EQ(t->status, Status::good);
    auto d = t->received();
    EXPECT_EQ(load_be32(&d[0]), 2u);
    EXPECT_EQ(load_be32(&d[4]), d.size() - 8);
    size_t at = 8;
    std::vector<std::string> ports;
    int holders = 0;
    while (at + 24 <= d.size()) {
        uint64_t key = load_be64(&d[at]);
        bool holder = d[at + 12] & 0x01;
        if (holder) {
            ++holders;
            EXPECT_EQ(key, key_b);
            EXPECT_EQ(d[at + 13], pr::write_exclusive_registrants_only);
        }
        EXPECT_EQ(load_be16(&d[at + 18]), 1u);
        uint32_t length = load_be32(&d[at + 20]);
        Sense error;
        auto tid = pr::parse_transport_id({&d[at + 24], length}, 0, error);
        EXPECT_TRUE(tid && tid->port);
        if (tid) {
            ports.push_back(tid->initiator_port);
        }
        at += 24 + length;
    }
    EXPECT_EQ(holders, 1);
    EXPECT_EQ(ports, (std::vector<std::string>{a->initiator_port, b->initiator_port}));
}

TEST(PrTransportId, RoundTripAndErrors) {
    std::string port = "iqn.1994-05.com.example:host1,i,0x23d000000001";
    auto t = pr::transport_id(port);
    EXPECT_EQ(t.size() % 4, 0u);
    EXPECT_EQ(t[0], 0x45);
    Sense error;
    auto parsed = pr::parse_transport_id(t, 0, error);
    ASSERT_TRUE(parsed);
    EXPECT_EQ(parsed->initiator_port, port);
    EXPECT_TRUE(parsed->port);
    EXPECT_EQ(parsed->length, t.size());
    // Upper case spellings are the same port.
    auto upper = pr::transport_id("IQN.1994-05.COM.EXAMPLE:HOST1,I,0X23D000000001");
    EXPECT_EQ(pr::parse_transport_id(upper, 0, error)->initiator_port, port);
    // Not iSCSI.
    t[0] = 0x41;
    EXPECT_FALSE(pr::parse_transport_id(t, 0, error));
    // Format 01b without an ISID.
    auto bare = pr::transport_id("iqn.1994-05.com.example:host1");
    EXPECT_FALSE(pr::parse_transport_id(bare, 0, error));
    bare[0] = 0x05; // format 00b: a device name is fine
    EXPECT_TRUE(pr::parse_transport_id(bare, 0, error));
    // Longer than the data.
    EXPECT_FALSE(pr::parse_transport_id(std::span<const uint8_t>(bare.data(), 8), 0, error));
}

// --- SPC-2 RESERVE / RELEASE ----------------------------------------------------------------------

TEST_F(PrTest, Reserve6ExcludesOtherNexuses) {
    auto reserve6 = [&](const Nexus& n) { return run(n, cdb_bytes({0x16, 0, 0, 0, 0, 0})); };
    auto release6 = [&](const Nexus& n) { return run(n, cdb_bytes({0x17, 0, 0, 0, 0, 0})); };
    EXPECT_EQ(reserve6(*a)->status, Status::good);
    EXPECT_EQ(reserve6(*a)->status, Status::good); // again: fine
    EXPECT_TRUE(conflicted(*reserve6(*b)));
    EXPECT_EQ(release6(*b)->status, Status::good); // a no-op
    EXPECT_TRUE(conflicted(*run(*b, cdb_bytes({0x1a, 0, 0x3f, 0, 255, 0}), 255)));
    EXPECT_TRUE(conflicted(*tur(*b)));
    EXPECT_TRUE(conflicted(*read(*b)));
    EXPECT_EQ(run(*b, cdb_bytes({0x12, 0, 0, 0, 96, 0}), 96)->status, Status::good);
    EXPECT_EQ(run(*b, cdb_bytes({0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0}), 8)->status, Status::good);
    // Persistent reservation commands conflict for everyone, the holder too.
    EXPECT_TRUE(conflicted(*prin(*a, pr::read_keys)));
    EXPECT_TRUE(conflicted(*reg_ignore(*b, key_b)));
    EXPECT_EQ(read(*a)->status, Status::good);
    EXPECT_EQ(release6(*a)->status, Status::good);
    EXPECT_EQ(run(*b, cdb_bytes({0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0}))->status, Status::good); // RESERVE(10)
    EXPECT_TRUE(conflicted(*reserve6(*a)));
    EXPECT_EQ(run(*b, cdb_bytes({0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0}))->status, Status::good); // RELEASE(10)
    // Third-party reservations are not supported.
    EXPECT_TRUE(invalid_field(*run(*a, cdb_bytes({0x56, 0x10, 0, 0, 0, 0, 0, 0, 0, 0})), 1, 4));
}

TEST_F(PrTest, Reserve6EndsWithTheNexusAndWithResets) {
    auto reserve6 = [&](const Nexus& n) { return run(n, cdb_bytes({0x16, 0, 0, 0, 0, 0})); };
    EXPECT_EQ(reserve6(*a2)->status, Status::good);
    h.target.nexus_removed(*a2);
    EXPECT_EQ(reserve6(*b)->status, Status::good);

    bool done = false;
    h.target.logical_unit_reset(*a, encode_lun(0), [&](TmfResult) { done = true; });
    ASSERT_TRUE(h.run_until([&] { return done; }));
    clear_ua(*a);
    EXPECT_EQ(reserve6(*a)->status, Status::good);
    done = false;
    h.target.target_reset(*b, false, [&](TmfResult) { done = true; });
    ASSERT_TRUE(h.run_until([&] { return done; }));
    clear_ua(*b);
    EXPECT_EQ(reserve6(*b)->status, Status::good);
}

TEST_F(PrTest, RegistrationsMakeReserve6Conflict) {
    reg_ignore(*a, key_a);
    EXPECT_TRUE(conflicted(*run(*a, cdb_bytes({0x16, 0, 0, 0, 0, 0}))));
    EXPECT_TRUE(conflicted(*run(*b, cdb_bytes({0x17, 0, 0, 0, 0, 0}))));
}

TEST_F(PrTest, PersistentReservationsSurviveResetsAndNexusLoss) {
    reg_ignore(*a, key_a);
    reserve(*a, key_a, pr::exclusive_access);
    bool done = false;
    h.target.logical_unit_reset(*b, encode_lun(0), [&](TmfResult) { done = true; });
    ASSERT_TRUE(h.run_until([&] { return done; }));
    clear_ua(*b);
    EXPECT_TRUE(conflicted(*read(*b)));
    h.target.nexus_removed(*a);
    h.target.nexus_added(*a);
    clear_ua(*a);
    EXPECT_EQ(read(*a)->status, Status::good);
}

TEST_F(PrTest, ColdResetIsAPowerOn) {
    reg_ignore(*a, key_a);
    reserve(*a, key_a, pr::exclusive_access);
    bool done = false;
    h.target.target_reset(*b, true, [&](TmfResult) { done = true; });
    ASSERT_TRUE(h.run_until([&] { return done; }));
    clear_ua(*b);
    // Without APTPL nothing survives a power on, and the generation starts over.
    Keys k = read_keys(*b);
    EXPECT_TRUE(k.keys.empty());
    EXPECT_EQ(k.generation, 0u);
    EXPECT_EQ(read(*b)->status, Status::good);
}

// --- APTPL ----------------------------------------------------------------------------------------

class PrPersistTest : public ::testing::Test {
protected:
    void SetUp() override {
        dir = std::filesystem::temp_directory_path() / fmt::format("ispace-pr-{}-{}", ::getpid(), counter++);
        std::filesystem::create_directories(dir);
        path = (dir / "lun0.pr.json").string();
    }
    void TearDown() override { std::filesystem::remove_all(dir); }

    LuConfig config() const {
        LuConfig c;
        c.options.pr_state_path = path;
        return c;
    }

    static inline int counter = 0;
    std::filesystem::path dir;
    std::string path;
};

struct Fixture : PrTest {
    explicit Fixture(LuConfig c) : PrTest(c) {}
    void TestBody() override {}
};

TEST_F(PrPersistTest, AptplStateSurvivesARestart) {
    {
        Fixture f(config());
        auto caps = f.prin(*f.a, pr::report_capabilities);
        EXPECT_EQ(caps->received()[2] & 0x01, 0x01); // PTPL_C
        EXPECT_EQ(caps->received()[3] & 0x01, 0x00); // PTPL_A: not yet
        EXPECT_EQ(f.reg(*f.a, 0, key_a, aptpl_bit)->status, Status::good);
        EXPECT_EQ(f.reg_ignore(*f.b, key_b, aptpl_bit)->status, Status::good);
        EXPECT_EQ(f.reserve(*f.a, key_a, pr::exclusive_access)->status, Status::good);
        EXPECT_EQ(f.prin(*f.a, pr::report_capabilities)->received()[3] & 0x01, 0x01);
        EXPECT_TRUE(std::filesystem::exists(path));
    }
    // "Power on": a new target device with the same state path.
    Fixture f(config());
    Keys k = f.read_keys(*f.a);
    EXPECT_EQ(k.generation, 0u);
    EXPECT_EQ(k.keys, (std::vector<uint64_t>{key_a, key_b}));
    auto held = f.read_reservation(*f.b);
    EXPECT_TRUE(held.reserved);
    EXPECT_EQ(held.key, key_a);
    EXPECT_EQ(held.type, pr::exclusive_access);
    EXPECT_TRUE(conflicted(*f.read(*f.b)));
    EXPECT_EQ(f.read(*f.a)->status, Status::good);
}

TEST_F(PrPersistTest, ColdResetKeepsAptplState) {
    Fixture f(config());
    f.reg(*f.a, 0, key_a, aptpl_bit);
    f.reserve(*f.a, key_a, pr::write_exclusive);
    bool done = false;
    f.h.target.target_reset(*f.b, true, [&](TmfResult) { done = true; });
    ASSERT_TRUE(f.h.run_until([&] { return done; }));
    f.clear_ua(*f.b);
    Keys k = f.read_keys(*f.b);
    EXPECT_EQ(k.keys, std::vector<uint64_t>{key_a});
    EXPECT_EQ(k.generation, 0u);
    EXPECT_TRUE(f.read_reservation(*f.b).reserved);
}

TEST_F(PrPersistTest, AptplOffForgetsOnRestart) {
    {
        Fixture f(config());
        f.reg(*f.a, 0, key_a, aptpl_bit);
        // The latest REGISTER decides: without APTPL nothing is kept.
        EXPECT_EQ(f.reg_ignore(*f.b, key_b)->status, Status::good);
        EXPECT_EQ(f.prin(*f.a, pr::report_capabilities)->received()[3] & 0x01, 0x00);
    }
    Fixture f(config());
    EXPECT_TRUE(f.read_keys(*f.a).keys.empty());
}

TEST_F(PrPersistTest, NoFileWithoutAptpl) {
    {
        Fixture f(config());
        f.reg(*f.a, 0, key_a);
    }
    EXPECT_FALSE(std::filesystem::exists(path));
}

TEST_F(PrPersistTest, CorruptStateFailsTheLogicalUnit) {
    {
        std::ofstream out(path);
        out << "{\"format\": 1, \"aptpl\": true, \"registrations\": [{\"initiator_port\": 3}]}";
    }
    Harness h({}, true);
    auto device = std::make_unique<TestDevice>(2048, 512);
    device->home = &h.reactor;
    LuOptions options;
    options.pr_state_path = path;
    auto added = h.target.add_lu(1, std::move(device), options);
    ASSERT_FALSE(added.ok());
    EXPECT_NE(added.error().message.find(path), std::string::npos);
}

TEST_F(PrPersistTest, StateFileFormat) {
    Fixture f(config());
    f.reg(*f.a, 0, key_a, aptpl_bit);
    f.reserve(*f.a, key_a, pr::write_exclusive);
    std::ifstream in(path);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_NE(text.find("\"aptpl\": true"), std::string::npos);
    EXPECT_NE(text.find("\"key\": \"0xa1a1a1a1a1a1a1a1\""), std::string::npos);
    EXPECT_NE(text.find("iqn.1994-05.com.example:host1,i,0x23d000000001"), std::string::npos);
    EXPECT_EQ(text, f.h.lu().reservations().serialize());
}

} // namespace
