// Reservations of one logical unit: SPC-4 persistent reservations (PERSISTENT RESERVE IN/OUT) and the
// older SPC-2 RESERVE/RELEASE, which exclude each other (SPC-2 5.5.1 with CRH=0: while any I_T nexus is
// registered RESERVE and RELEASE conflict; while an SPC-2 reservation is held every PERSISTENT RESERVE
// command conflicts).
//
// Persistent reservation state is keyed by I_T nexus as SPC-4 names it: the initiator port (the iSCSI
// TransportID form "iqn...,i,0x<isid>", so a different ISID is a different initiator port) and the
// relative target port identifier (the iSCSI target portal group tag). The same initiator seen through
// two portals has two I_T nexuses, each registered on its own unless ALL_TG_PT asked for every port.
// An SPC-2 reservation belongs to one live nexus (Nexus::id) and ends with it.
//
// Which command conflicts with which reservation is in the operation table (cdb.hpp op_pr_* flags);
// conflicts() applies it on the command path and costs one atomic load while nothing is reserved.
//
// Persistence (APTPL): with LuOptions::pr_state_path set, the state is written as JSON after every change
// while the last REGISTER asked for APTPL=1 (write temp, fsync, rename, fsync the directory), and read
// back when the logical unit is added. With no path, REPORT CAPABILITIES says PTPL_C=0 and APTPL=1 is
// refused. PRgeneration starts at zero on every start, as after a power on.
//
// Threads: the state sits behind its own mutex, a leaf lock: nothing else is locked while it is held.
// Unit attentions and task aborts that a service action causes are returned as an outcome and carried
// out by pr.cpp's handlers after the lock is dropped.
#pragma once

#include "common/result.hpp"
#include "scsi/task.hpp"
#include "scsi_spec/opcodes.hpp"
#include "scsi_spec/sense.hpp"

#include <atomic>
#include <cstdint>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace ispace::scsi {

class Execution;
struct Operation;

namespace pr {

// The service actions and reservation types are scsi_spec's (opcodes.hpp, namespace pr).
bool valid_type(uint8_t type);
bool is_all_registrants(uint8_t type);  // every registrant is a holder
bool is_registrants_only(uint8_t type); // registrants have access, one of them holds it
bool is_exclusive_access(uint8_t type); // reads conflict too
const char* type_name(uint8_t type);

// At most this many registrations per logical unit; beyond it REGISTER fails with INSUFFICIENT
// REGISTRATION RESOURCES. Bounds the memory and the READ FULL STATUS data an initiator can cause.
constexpr size_t max_registrations = 1024;

// The CDB-dependent exception of op_reservation_benign entries: PREVENT ALLOW MEDIUM REMOVAL with
// PREVENT=0, START STOP UNIT with START=1 and no power condition.
bool benign_form(const uint8_t* cdb);

// iSCSI TransportIDs (SPC-4 7.6.4). Initiator ports are kept canonical: lower case name and ISID.
std::string canonical_port(std::string_view initiator_port);
// FORMAT CODE 01b (initiator port), padded to a multiple of four, at least 24 bytes.
std::vector<uint8_t> transport_id(std::string_view initiator_port);
struct ParsedTransportId {
    std::string initiator_port; // canonical "name,i,0x<isid>"; the bare name for FORMAT CODE 00b
    bool port = false;          // FORMAT CODE 01b: names one initiator port
    size_t length = 0;          // bytes the TransportID occupies
};
// Parses the TransportID at the start of `data`; on error the sense points at the offending byte
// of the parameter list (`base` is the TransportID's offset in it).
std::optional<ParsedTransportId> parse_transport_id(std::span<const uint8_t> data, size_t base, Sense& error);

// Handlers of the operation table.
void persistent_reserve_in(Execution& cmd);
void persistent_reserve_out(Execution& cmd);
void spc2_reserve(Execution& cmd); // RESERVE(6)/(10): SPC-2 reservation of the whole logical unit
void spc2_release(Execution& cmd); // RELEASE(6)/(10)

} // namespace pr

// An I_T nexus as reservations name it.
struct ItNexus {
    std::string initiator_port; // canonical TransportID form "iqn...,i,0x<isid>"
    uint16_t relative_target_port = 0;
    bool operator==(const ItNexus&) const = default;
};
ItNexus it_nexus_of(const Nexus& nexus);

struct Registration {
    ItNexus nexus;
    uint64_t key = 0;
    bool all_tg_pt = false; // registered by a REGISTER with ALL_TG_PT=1 (reported in READ FULL STATUS)
};

struct PersistentReservation {
    uint8_t type = 0;
    uint8_t scope = pr::lu_scope;
    ItNexus holder; // unused for the all-registrants types: every registrant holds them
};

// A decoded PERSISTENT RESERVE OUT (CDB and parameter list).
struct ProutRequest {
    uint8_t service_action = 0;
    uint8_t scope = 0;
    uint8_t type = 0;
    uint64_t key = 0;    // RESERVATION KEY
    uint64_t sa_key = 0; // SERVICE ACTION RESERVATION KEY
    bool spec_i_pt = false;
    bool all_tg_pt = false;
    bool aptpl = false;
    std::vector<std::string> specified_ports; // SPEC_I_PT TransportIDs (canonical initiator ports)
    // REGISTER AND MOVE
    bool unreg = false;
    uint16_t move_relative_target_port = 0;
    std::string move_initiator_port;
};

// What a PERSISTENT RESERVE OUT did, for the handler to finish after the state lock is released.
struct ProutOutcome {
    Status status = Status::good;
    std::optional<Sense> sense;                            // with CHECK CONDITION
    std::vector<std::pair<uint64_t, uint16_t>> attentions; // (Nexus::id, ASC/ASCQ)
    std::vector<uint64_t> aborted_nexuses;                 // PREEMPT AND ABORT: their tasks go
    bool changed = false;                                  // state to persist
};

// What REPORT CAPABILITIES and READ FULL STATUS need beyond the state.
struct PrStatus {
    uint32_t generation = 0;
    std::vector<Registration> registrations;
    std::optional<PersistentReservation> reservation;
    bool aptpl = false;
    bool ptpl_capable = false;
};

class Reservations {
public:
    // `state_path` empty: APTPL not supported. `name` prefixes messages ("lun 0").
    Reservations(std::string state_path, std::string name);
    Reservations(const Reservations&) = delete;
    Reservations& operator=(const Reservations&) = delete;

    // --- the command path ---
    // Whether `op` from `nexus` must end with RESERVATION CONFLICT. One relaxed load when nothing is
    // reserved.
    bool conflicts(const Operation& op, const uint8_t* cdb, const Nexus* nexus) const;

    // --- nexuses and resets ---
    void nexus_added(const Nexus& nexus);
    // I_T nexus loss: its SPC-2 reservation ends (registrations are persistent).
    void nexus_removed(uint64_t nexus);
    // LOGICAL UNIT RESET, target reset: the SPC-2 reservation ends; persistent ones stay.
    void reset();
    // TARGET COLD RESET, which iSCSI defines as a power on: what APTPL did not make persistent is lost
    // and PRgeneration starts again from zero.
    void power_on();

    // --- SPC-2 RESERVE / RELEASE (false: RESERVATION CONFLICT) ---
    bool spc2_reserve(uint64_t nexus);
    bool spc2_release(uint64_t nexus);
    bool spc2_reserved() const;

    // --- persistent reservations ---
    // The PRIN/PROUT guard of SPC-2 5.5.1: an SPC-2 reservation makes them all conflict.
    bool persistent_commands_conflict() const { return spc2_reserved(); }
    // Applies a PERSISTENT RESERVE OUT from `nexus`. `target_ports`: every relative target port of the
    // target device (ALL_TG_PT registers on each; REGISTER AND MOVE must name one of them).
    ProutOutcome apply(const Nexus& nexus, const ProutRequest& request,
                       std::span<const uint16_t> target_ports);
    PrStatus status() const;
    bool ptpl_capable() const { return !_state_path.empty(); }

    // --- APTPL persistence ---
    // Reads the state file if there is one (at add_lu). A file that cannot be read or parsed is an
    // error: dropping reservations silently would let another host write to a disk it must not.
    Result<void> load();
    // Writes the newest state if it has not been written yet (0 or -errno). Blocking: called on a worker
    // thread (Reactor::run_blocking) or at shutdown. Serialised internally; each call writes at least
    // the state as of the call.
    int persist();
    // The JSON document persist() writes for the current state (tests, docs).
    std::string serialize() const;

private:
    using Lock = std::lock_guard<std::mutex>;

    // All under _mutex.
    Registration* find(const ItNexus& nexus);
    const Registration* find(const ItNexus& nexus) const;
    bool is_holder(const ItNexus& nexus) const;
    std::vector<uint64_t> live_ids(const ItNexus& nexus) const;
    void attention(ProutOutcome& out, const ItNexus& nexus, uint16_t code) const;
    void unregister(ProutOutcome& out, const ItNexus& nexus);
    void update_active();
    void state_changed(ProutOutcome& out, bool bump_generation);
    std::string serialize_locked() const;

    ProutOutcome register_key(const ItNexus& me, const ProutRequest& r, std::span<const uint16_t> ports);
    ProutOutcome reserve(const ItNexus& me, const ProutRequest& r);
    ProutOutcome release(const ItNexus& me, const ProutRequest& r);
    ProutOutcome clear(const ItNexus& me, const ProutRequest& r);
    ProutOutcome preempt(const ItNexus& me, const ProutRequest& r);
    ProutOutcome register_and_move(const ItNexus& me, const ProutRequest& r, std::span<const uint16_t> ports);

    const std::string _state_path;
    const std::string _name;

    mutable std::mutex _mutex;
    std::atomic<bool> _active{false}; // an SPC-2 or persistent reservation exists (mirror for the fast path)
    std::unordered_map<uint64_t, ItNexus> _live; // Nexus::id -> its I_T nexus
    std::optional<uint64_t> _spc2_holder;
    uint32_t _generation = 0;
    std::vector<Registration> _registrations; // in registration order (READ KEYS reports it so)
    std::optional<PersistentReservation> _reservation;
    bool _aptpl = false;
    bool _file_aptpl = false; // the APTPL value of the newest state handed to persist()
    uint64_t _version = 0;    // bumped on every change that persist() must write

    // Persistence: one writer at a time; _written is the _version of what is on disk.
    std::mutex _persist_mutex;
    uint64_t _written = 0; // under _persist_mutex
};

} // namespace ispace::scsi
