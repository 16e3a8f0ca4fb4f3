// Reservations: the persistent reservation state machine (SPC-4 "Reservations"), SPC-2 RESERVE/RELEASE, the
// conflict check of the command path, and APTPL persistence. The command handlers that decode CDBs and
// parameter lists are in pr_commands.cpp.
#include "scsi/pr.hpp"

#include "common/log.hpp"
#include "scsi/cdb.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

namespace ispace::scsi {

// --- types and TransportIDs ---------------------------------------------------------------------

namespace pr {

bool valid_type(uint8_t type) {
    switch (type) {
    case write_exclusive:
    case exclusive_access:
    case write_exclusive_registrants_only:
    case exclusive_access_registrants_only:
    case write_exclusive_all_registrants:
    case exclusive_access_all_registrants:
        return true;
    default:
        return false;
    }
}

bool is_all_registrants(uint8_t type) {
    return type == write_exclusive_all_registrants || type == exclusive_access_all_registrants;
}

bool is_registrants_only(uint8_t type) {
    return type == write_exclusive_registrants_only || type == exclusive_access_registrants_only;
}

bool is_exclusive_access(uint8_t type) {
    return type == exclusive_access || type == exclusive_access_registrants_only ||
           type == exclusive_access_all_registrants;
}

const char* type_name(uint8_t type) {
    switch (type) {
    case write_exclusive:
        return "WRITE EXCLUSIVE";
    case exclusive_access:
        return "EXCLUSIVE ACCESS";
    case write_exclusive_registrants_only:
        return "WRITE EXCLUSIVE - REGISTRANTS ONLY";
    case exclusive_access_registrants_only:
        return "EXCLUSIVE ACCESS - REGISTRANTS ONLY";
    case write_exclusive_all_registrants:
        return "WRITE EXCLUSIVE - ALL REGISTRANTS";
    case exclusive_access_all_registrants:
        return "EXCLUSIVE ACCESS - ALL REGISTRANTS";
    default:
        return "?";
    }
}

bool benign_form(const uint8_t* cdb) {
    switch (cdb[0]) {
    case op::prevent_allow_medium_removal:
        return (cdb[4] & 0x03) == 0;
    case op::start_stop_unit:
        return (cdb[4] & 0x01) && (cdb[4] >> 4) == 0;
    default:
        return false;
    }
}

std::string canonical_port(std::string_view initiator_port) {
    // iSCSI names compare case-insensitively (RFC 3722 folds them to lower case), and so does the
    // ISID's hex; one spelling per port keeps registrations from splitting.
    std::string out(initiator_port);
    for (char& c : out) {
        c = char(std::tolower(static_cast<unsigned char>(c)));
    }
    return out;
}

namespace {

constexpr uint8_t protocol_iscsi = 0x5;
constexpr uint8_t format_device = 0x0; // TransportID names an initiator device (iSCSI name only)
constexpr uint8_t format_port = 0x1;   // ... an initiator port (name ",i,0x" ISID)
constexpr std::string_view isid_separator = ",i,0x";

Sense list_length_error() {
    return Sense::make(SenseKey::illegal_request, asc::parameter_list_length_error);
}

} // namespace

std::vector<uint8_t> transport_id(std::string_view initiator_port) {
    // SPC-4 7.6.4: null terminated, ADDITIONAL LENGTH a multiple of four and at least 20.
    size_t name = initiator_port.size() + 1;
    size_t additional = std::max<size_t>((name + 3) / 4 * 4, 20);
    std::vector<uint8_t> t(4 + additional, 0);
    t[0] = uint8_t(format_port << 6 | protocol_iscsi);
    t[2] = uint8_t(additional >> 8);
    t[3] = uint8_t(additional);
    std::memcpy(&t[4], initiator_port.data(), initiator_port.size());
    return t;
}

std::optional<ParsedTransportId> parse_transport_id(std::span<const uint8_t> data, size_t base,
                                                    Sense& error) {
    if (data.size() < 4) {
        error = list_length_error();
        return std::nullopt;
    }
    uint8_t format = data[0] >> 6;
    if ((data[0] & 0x0f) != protocol_iscsi) {
        error = Sense::invalid_field_in_parameter_list(uint16_t(base), 3);
        return std::nullopt;
    }
    if (format != format_device && format != format_port) {
        error = Sense::invalid_field_in_parameter_list(uint16_t(base), 7);
        return std::nullopt;
    }
    size_t additional = size_t(data[2]) << 8 | data[3];
    if (4 + additional > data.size()) {
        error = list_length_error();
        return std::nullopt;
    }
    auto text = data.subspan(4, additional);
    auto nul = std::find(text.begin(), text.end(), uint8_t(0));
    std::string name(text.begin(), nul);
    if (name.empty()) {
        error = Sense::invalid_field_in_parameter_list(uint16_t(base + 4));
        return std::nullopt;
    }
    ParsedTransportId id;
    id.initiator_port = canonical_port(name);
    id.port = format == format_port;
    id.length = 4 + additional;
    size_t at = id.initiator_port.find(isid_separator);
    if (id.port) {
        // The ISID: twelve hex digits after the separator.
        std::string_view isid = at == std::string::npos
                                    ? std::string_view()
                                    : std::string_view(id.initiator_port).substr(at + isid_separator.size());
        bool hex = isid.size() == 12 && std::all_of(isid.begin(), isid.end(), [](char c) {
                       return std::isxdigit(static_cast<unsigned char>(c)) != 0;
                   });
        if (at == 0 || !hex) {
            error = Sense::invalid_field_in_parameter_list(uint16_t(base + 4));
            return std::nullopt;
        }
    } else if (at != std::string::npos) {
        error = Sense::invalid_field_in_parameter_list(uint16_t(base), 7);
        return std::nullopt;
    }
    return id;
}

} // namespace pr

ItNexus it_nexus_of(const Nexus& nexus) {
    return ItNexus{pr::canonical_port(nexus.initiator_port), nexus.relative_target_port};
}

// --- Reservations: the command path and nexus events -------------------------------------------

Reservations::Reservations(std::string state_path, std::string name)
    : _state_path(std::move(state_path)), _name(std::move(name)) {}

bool Reservations::conflicts(const Operation& op, const uint8_t* cdb, const Nexus* nexus) const {
    if (!_active.load(std::memory_order_acquire) || (op.flags & op_reservation_own)) {
        return false;
    }
    bool benign = (op.flags & op_reservation_benign) && pr::benign_form(cdb);
    uint64_t id = nexus ? nexus->id : 0;
    Lock lock(_mutex);
    if (_spc2_holder && *_spc2_holder != id && !benign && !(op.flags & op_spc2_allowed)) {
        return true;
    }
    if (!_reservation) {
        return false;
    }
    // The nexus's name as nexus_added() recorded it: no allocation per command while reserved.
    auto live = _live.find(id);
    ItNexus unknown = nexus && live == _live.end() ? it_nexus_of(*nexus) : ItNexus{};
    const ItNexus& me = live != _live.end() ? live->second : unknown;
    if (is_holder(me)) {
        return false;
    }
    uint8_t type = _reservation->type;
    // Registrants-only types give every registered I_T nexus full access (all-registrants types make
    // them holders, handled above).
    if (pr::is_registrants_only(type) && find(me)) {
        return false;
    }
    if (benign || (op.flags & op_pr_allowed)) {
        return false;
    }
    if (op.flags & op_pr_read) {
        return pr::is_exclusive_access(type);
    }
    return true;
}

void Reservations::nexus_added(const Nexus& nexus) {
    ItNexus it = it_nexus_of(nexus);
    Lock lock(_mutex);
    _live[nexus.id] = std::move(it);
}

void Reservations::nexus_removed(uint64_t nexus) {
    Lock lock(_mutex);
    _live.erase(nexus);
    if (_spc2_holder == nexus) {
        _spc2_holder.reset();
        update_active();
    }
}

void Reservations::reset() {
    Lock lock(_mutex);
    _spc2_holder.reset();
    update_active();
}

void Reservations::power_on() {
    Lock lock(_mutex);
    _spc2_holder.reset();
    if (!_aptpl) {
        _registrations.clear();
        _reservation.reset();
    }
    _generation = 0;
    update_active();
}

bool Reservations::spc2_reserve(uint64_t nexus) {
    Lock lock(_mutex);
    // CRH=0: with any registration, RESERVE conflicts whoever sends it.
    if (!_registrations.empty() || (_spc2_holder && *_spc2_holder != nexus)) {
        return false;
    }
    _spc2_holder = nexus;
    update_active();
    return true;
}

bool Reservations::spc2_release(uint64_t nexus) {
    Lock lock(_mutex);
    if (!_registrations.empty()) {
        return false;
    }
    // A RELEASE from an I_T nexus that holds nothing is GOOD and changes nothing.
    if (_spc2_holder == nexus) {
        _spc2_holder.reset();
        update_active();
    }
    return true;
}

bool Reservations::spc2_reserved() const {
    Lock lock(_mutex);
    return _spc2_holder.has_value();
}

PrStatus Reservations::status() const {
    Lock lock(_mutex);
    PrStatus s;
    s.generation = _generation;
    s.registrations = _registrations;
    s.reservation = _reservation;
    s.aptpl = _aptpl;
    s.ptpl_capable = ptpl_capable();
    return s;
}

// --- helpers (under _mutex) ---------------------------------------------------------------------

Registration* Reservations::find(const ItNexus& nexus) {
    auto it = std::find_if(_registrations.begin(), _registrations.end(),
                           [&](const Registration& r) { return r.nexus == nexus; });
    return it == _registrations.end() ? nullptr : &*it;
}

const Registration* Reservations::find(const ItNexus& nexus) const {
    return const_cast<Reservations*>(this)->find(nexus);
}

bool Reservations::is_holder(const ItNexus& nexus) const {
    if (!_reservation) {
        return false;
    }
    if (pr::is_all_registrants(_reservation->type)) {
        return find(nexus) != nullptr;
    }
    return _reservation->holder == nexus;
}

std::vector<uint64_t> Reservations::live_ids(const ItNexus& nexus) const {
    std::vector<uint64_t> ids;
    for (const auto& [id, it] : _live) {
        if (it == nexus) {
            ids.push_back(id);
        }
    }
    return ids;
}

void Reservations::attention(ProutOutcome& out, const ItNexus& nexus, uint16_t code) const {
    for (uint64_t id : live_ids(nexus)) {
        out.attentions.emplace_back(id, code);
    }
}

void Reservations::update_active() {
    _active.store(_spc2_holder.has_value() || _reservation.has_value(), std::memory_order_release);
}

void Reservations::state_changed(ProutOutcome& out, bool bump_generation) {
    if (bump_generation) {
        ++_generation;
    }
    update_active();
    // Written while APTPL is on, and once more when it goes off so that a restart does not bring back
    // what the initiators no longer want persisted.
    if (ptpl_capable() && (_aptpl || _file_aptpl)) {
        ++_version;
        out.changed = true;
    }
    _file_aptpl = _aptpl;
}

void Reservations::unregister(ProutOutcome& out, const ItNexus& nexus) {
    bool was_holder =
        _reservation && !pr::is_all_registrants(_reservation->type) && _reservation->holder == nexus;
    std::erase_if(_registrations, [&](const Registration& r) { return r.nexus == nexus; });
    if (!_reservation) {
        return;
    }
    uint8_t type = _reservation->type;
    if (pr::is_all_registrants(type)) {
        // An all-registrants reservation lasts as long as any registrant does.
        if (_registrations.empty()) {
            _reservation.reset();
        }
    } else if (was_holder) {
        // SPC-4 (unregistering): the holder's unregistering releases; registrants-only types tell the
        // remaining registrants.
        _reservation.reset();
        if (pr::is_registrants_only(type)) {
            for (const Registration& r : _registrations) {
                attention(out, r.nexus, asc::reservations_released);
            }
        }
    }
}

namespace {

ProutOutcome conflict() {
    ProutOutcome out;
    out.status = Status::reservation_conflict;
    return out;
}

ProutOutcome check(const Sense& sense) {
    ProutOutcome out;
    out.status = Status::check_condition;
    out.sense = sense;
    return out;
}

Sense insufficient_resources() {
    return Sense::make(SenseKey::illegal_request, asc::insufficient_registration_resources);
}

} // namespace

// --- PERSISTENT RESERVE OUT service actions -----------------------------------------------------

ProutOutcome Reservations::apply(const Nexus& nexus, const ProutRequest& request,
                                 std::span<const uint16_t> target_ports) {
    ItNexus me = it_nexus_of(nexus);
    Lock lock(_mutex);
    switch (request.service_action) {
    case pr::register_key:
    case pr::register_and_ignore_existing_key:
        return register_key(me, request, target_ports);
    case pr::reserve:
        return reserve(me, request);
    case pr::release:
        return release(me, request);
    case pr::clear:
        return clear(me, request);
    case pr::preempt:
    case pr::preempt_and_abort:
        return preempt(me, request);
    case pr::register_and_move:
        return register_and_move(me, request, target_ports);
    default:
        return check(Sense::invalid_field_in_cdb(1, 4));
    }
}

ProutOutcome Reservations::register_key(const ItNexus& me, const ProutRequest& r,
                                        std::span<const uint16_t> ports) {
    bool ignore_key = r.service_action == pr::register_and_ignore_existing_key;
    ProutOutcome out;
    if (Registration* reg = find(me)) {
        if (!ignore_key && r.key != reg->key) {
            return conflict();
        }
        if (r.spec_i_pt) {
            // SPEC_I_PT registers other I_T nexuses along with an unregistered one only.
            return check(Sense::invalid_field_in_parameter_list(20, 3));
        }
        if (r.sa_key == 0) {
            unregister(out, me);
        } else {
            reg->key = r.sa_key;
        }
        _aptpl = r.aptpl;
        state_changed(out, true);
        return out;
    }
    if (!ignore_key && r.key != 0) {
        return conflict();
    }
    if (r.sa_key == 0) {
        // Unregistering what is not registered: GOOD, nothing happens.
        return out;
    }
    // The I_T nexuses to register: this one (on every target port with ALL_TG_PT), and those the
    // SPEC_I_PT TransportIDs name, on this target port (or every one).
    std::vector<ItNexus> add;
    auto add_port = [&](const std::string& port) {
        if (r.all_tg_pt) {
            for (uint16_t p : ports) {
                add.push_back({port, p});
            }
        } else {
            add.push_back({port, me.relative_target_port});
        }
    };
    add_port(me.initiator_port);
    if (std::find(add.begin(), add.end(), me) == add.end()) {
        add.push_back(me);
    }
    size_t own = add.size();
    for (const std::string& port : r.specified_ports) {
        add_port(port);
    }
    std::vector<ItNexus> unique;
    for (size_t i = 0; i < add.size(); ++i) {
        if (std::find(unique.begin(), unique.end(), add[i]) != unique.end()) {
            continue;
        }
        if (find(add[i])) {
            // The same initiator port on another target port keeps its own registration; an I_T
            // nexus named by SPEC_I_PT must not be registered already (SPC-4, SPEC_I_PT).
            if (i >= own) {
                return check(Sense::invalid_field_in_parameter_list(24));
            }
            continue;
        }
        unique.push_back(add[i]);
    }
    if (_registrations.size() + unique.size() > pr::max_registrations) {
        return check(insufficient_resources());
    }
    for (ItNexus& n : unique) {
        _registrations.push_back({std::move(n), r.sa_key, r.all_tg_pt});
    }
    _aptpl = r.aptpl;
    state_changed(out, true);
    return out;
}

ProutOutcome Reservations::reserve(const ItNexus& me, const ProutRequest& r) {
    const Registration* reg = find(me);
    if (!reg || reg->key != r.key) {
        return conflict();
    }
    ProutOutcome out;
    if (_reservation) {
        // The holder may repeat its reservation; anything else conflicts.
        if (is_holder(me) && _reservation->type == r.type && _reservation->scope == r.scope) {
            return out;
        }
        return conflict();
    }
    _reservation = PersistentReservation{r.type, r.scope, me};
    state_changed(out, false);
    return out;
}

ProutOutcome Reservations::release(const ItNexus& me, const ProutRequest& r) {
    const Registration* reg = find(me);
    if (!reg || reg->key != r.key) {
        return conflict();
    }
    ProutOutcome out;
    if (!_reservation || !is_holder(me)) {
        return out;
    }
    if (_reservation->type != r.type || _reservation->scope != r.scope) {
        return check(Sense::make(SenseKey::illegal_request, asc::invalid_release_of_persistent_reservation));
    }
    uint8_t type = _reservation->type;
    _reservation.reset();
    // SPC-4 (releasing): releasing a registrants-only or all-registrants reservation tells the other
    // registrants.
    if (type != pr::write_exclusive && type != pr::exclusive_access) {
        for (const Registration& other : _registrations) {
            if (!(other.nexus == me)) {
                attention(out, other.nexus, asc::reservations_released);
            }
        }
    }
    state_changed(out, false);
    return out;
}

ProutOutcome Reservations::clear(const ItNexus& me, const ProutRequest& r) {
    const Registration* reg = find(me);
    if (!reg || reg->key != r.key) {
        return conflict();
    }
    ProutOutcome out;
    for (const Registration& other : _registrations) {
        if (!(other.nexus == me)) {
            attention(out, other.nexus, asc::reservations_preempted);
        }
    }
    _registrations.clear();
    _reservation.reset();
    state_changed(out, true);
    return out;
}

ProutOutcome Reservations::preempt(const ItNexus& me, const ProutRequest& r) {
    const Registration* reg = find(me);
    if (!reg || reg->key != r.key) {
        return conflict();
    }
    bool abort = r.service_action == pr::preempt_and_abort;
    ProutOutcome out;
    std::vector<ItNexus> removed;
    // Removes the registrations whose key is `key` (every other one for all-registrants preemption),
    // never the preempting I_T nexus's own (SPC-4, preempting).
    auto remove = [&](std::optional<uint64_t> key) {
        std::erase_if(_registrations, [&](const Registration& x) {
            if (x.nexus == me || (key && x.key != *key)) {
                return false;
            }
            removed.push_back(x.nexus);
            return true;
        });
    };
    auto finish = [&] {
        for (const ItNexus& n : removed) {
            attention(out, n, asc::registrations_preempted);
            if (abort) {
                std::vector<uint64_t> ids = live_ids(n);
                out.aborted_nexuses.insert(out.aborted_nexuses.end(), ids.begin(), ids.end());
            }
        }
        state_changed(out, true);
    };

    if (!_reservation) {
        if (r.sa_key == 0) {
            return check(Sense::invalid_field_in_parameter_list(8));
        }
        remove(r.sa_key);
        if (removed.empty()) {
            return conflict();
        }
        finish();
        return out;
    }
    PersistentReservation old = *_reservation;
    if (pr::is_all_registrants(old.type)) {
        if (r.sa_key == 0) {
            // Preempting an all-registrants reservation: every other registration goes and the
            // preempting I_T nexus holds a new reservation of the CDB's type.
            remove(std::nullopt);
            _reservation = PersistentReservation{r.type, r.scope, me};
        } else {
            remove(r.sa_key);
            if (removed.empty()) {
                return conflict();
            }
        }
        finish();
        return out;
    }
    const Registration* holder = find(old.holder);
    if (r.sa_key == 0) {
        return check(Sense::invalid_field_in_parameter_list(8));
    }
    if (holder && holder->key == r.sa_key) {
        remove(r.sa_key);
        _reservation = PersistentReservation{r.type, r.scope, me};
        if (old.type != r.type || old.scope != r.scope) {
            for (const Registration& other : _registrations) {
                if (!(other.nexus == me)) {
                    attention(out, other.nexus, asc::reservations_released);
                }
            }
        }
        finish();
        return out;
    }
    remove(r.sa_key);
    if (removed.empty()) {
        return conflict();
    }
    finish();
    return out;
}

ProutOutcome Reservations::register_and_move(const ItNexus& me, const ProutRequest& r,
                                             std::span<const uint16_t> ports) {
    const Registration* reg = find(me);
    if (!reg || reg->key != r.key) {
        return conflict();
    }
    // Only the holder of a single-holder reservation can move it.
    if (!_reservation || pr::is_all_registrants(_reservation->type) || !is_holder(me)) {
        return conflict();
    }
    if (r.sa_key == 0) {
        return check(Sense::invalid_field_in_parameter_list(8));
    }
    if (std::find(ports.begin(), ports.end(), r.move_relative_target_port) == ports.end()) {
        return check(Sense::invalid_field_in_parameter_list(18));
    }
    ItNexus dest{r.move_initiator_port, r.move_relative_target_port};
    if (dest == me) {
        return check(Sense::invalid_field_in_parameter_list(24));
    }
    ProutOutcome out;
    if (Registration* d = find(dest)) {
        d->key = r.sa_key;
    } else {
        if (_registrations.size() >= pr::max_registrations) {
            return check(insufficient_resources());
        }
        _registrations.push_back({dest, r.sa_key, false});
    }
    _reservation->holder = dest;
    if (r.unreg) {
        std::erase_if(_registrations, [&](const Registration& x) { return x.nexus == me; });
    }
    _aptpl = r.aptpl;
    state_changed(out, true);
    return out;
}

// --- persistence --------------------------------------------------------------------------------

namespace {

using nlohmann::json;

constexpr int state_format = 1;

json nexus_json(const ItNexus& n) {
    return json{{"initiator_port", n.initiator_port}, {"relative_target_port", n.relative_target_port}};
}

std::optional<ItNexus> nexus_from(const json& j) {
    if (!j.is_object() || !j.contains("initiator_port") || !j["initiator_port"].is_string() ||
        !j.contains("relative_target_port") || !j["relative_target_port"].is_number_unsigned()) {
        return std::nullopt;
    }
    uint64_t port = j["relative_target_port"].get<uint64_t>();
    if (port > 0xffff) {
        return std::nullopt;
    }
    return ItNexus{pr::canonical_port(j["initiator_port"].get<std::string>()), uint16_t(port)};
}

// Keys as hex strings: JSON readers other than ours lose precision on 64-bit integers.
std::optional<uint64_t> key_from(const json& j) {
    if (!j.is_string()) {
        return std::nullopt;
    }
    const std::string& s = j.get_ref<const std::string&>();
    if (s.size() < 3 || s.size() > 18 || s[0] != '0' || (s[1] != 'x' && s[1] != 'X')) {
        return std::nullopt;
    }
    uint64_t v = 0;
    for (size_t i = 2; i < s.size(); ++i) {
        int c = std::tolower(static_cast<unsigned char>(s[i]));
        if (!std::isxdigit(c)) {
            return std::nullopt;
        }
        v = v << 4 | uint64_t(c <= '9' ? c - '0' : c - 'a' + 10);
    }
    return v;
}

int write_fully(int fd, const std::string& data) {
    size_t done = 0;
    while (done < data.size()) {
        ssize_t n = ::write(fd, data.data() + done, data.size() - done);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        done += size_t(n);
    }
    return 0;
}

// Write temp, fsync, rename over, fsync the directory: after a crash the file holds either the old
// or the new state, never a mix, and the rename itself is durable.
int write_atomically(const std::string& path, const std::string& data) {
    std::string temp = path + ".tmp";
    int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        return -errno;
    }
    int error = write_fully(fd, data);
    if (error == 0 && ::fsync(fd) != 0) {
        error = -errno;
    }
    if (::close(fd) != 0 && error == 0) {
        error = -errno;
    }
    if (error == 0 && ::rename(temp.c_str(), path.c_str()) != 0) {
        error = -errno;
    }
    if (error != 0) {
        ::unlink(temp.c_str());
        return error;
    }
    size_t slash = path.rfind('/');
    std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
    int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        return -errno;
    }
    if (::fsync(dfd) != 0) {
        error = -errno;
    }
    ::close(dfd);
    return error;
}

} // namespace

std::string Reservations::serialize_locked() const {
    json j;
    j["format"] = state_format;
    j["aptpl"] = _aptpl;
    json regs = json::array();
    // Without APTPL nothing is kept: the file then only says so.
    if (_aptpl) {
        for (const Registration& r : _registrations) {
            json e = nexus_json(r.nexus);
            e["key"] = fmt::format("0x{:016x}", r.key);
            e["all_tg_pt"] = r.all_tg_pt;
            regs.push_back(std::move(e));
        }
    }
    j["registrations"] = std::move(regs);
    if (_aptpl && _reservation) {
        json res;
        res["type"] = _reservation->type;
        res["scope"] = _reservation->scope;
        if (!pr::is_all_registrants(_reservation->type)) {
            res["holder"] = nexus_json(_reservation->holder);
        }
        j["reservation"] = std::move(res);
    } else {
        j["reservation"] = nullptr;
    }
    return j.dump(2) + "\n";
}

std::string Reservations::serialize() const {
    Lock lock(_mutex);
    return serialize_locked();
}

int Reservations::persist() {
    if (_state_path.empty()) {
        return 0;
    }
    std::lock_guard writer(_persist_mutex);
    std::string doc;
    uint64_t version = 0;
    {
        Lock lock(_mutex);
        version = _version;
        if (version == _written) {
            return 0;
        }
        doc = serialize_locked();
    }
    int error = write_atomically(_state_path, doc);
    if (error != 0) {
        log_error("{}: persistent reservations: writing {}: {}", _name, _state_path, std::strerror(-error));
        return error;
    }
    _written = version;
    return 0;
}

Result<void> Reservations::load() {
    if (_state_path.empty()) {
        return {};
    }
    std::string text;
    int fd = ::open(_state_path.c_str(), O_RDONLY | O_CLOEXEC);
    int error = 0;
    if (fd < 0) {
        error = errno;
    } else {
        char chunk[4096];
        for (;;) {
            ssize_t n = ::read(fd, chunk, sizeof chunk);
            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (n <= 0) {
                error = n < 0 ? errno : 0;
                break;
            }
            text.append(chunk, size_t(n));
        }
        ::close(fd);
    }
    if (error == ENOENT) {
        return {};
    }
    if (error != 0) {
        return make_error(
            fmt::format("{}: persistent reservation state {}: {}", _name, _state_path, std::strerror(error)),
            error);
    }
    auto bad = [&](std::string_view what) {
        return make_error(fmt::format("{}: persistent reservation state {}: {} (fix or remove the file; "
                                      "removing it drops the registrations it holds)",
                                      _name, _state_path, what),
                          EINVAL);
    };
    json j = json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
        return bad("not a JSON object");
    }
    if (!j.contains("format") || j["format"] != state_format) {
        return bad(fmt::format("unknown format (expected \"format\": {})", state_format));
    }
    if (!j.contains("aptpl") || !j["aptpl"].is_boolean()) {
        return bad("\"aptpl\" missing");
    }
    bool aptpl = j["aptpl"].get<bool>();
    std::vector<Registration> regs;
    std::optional<PersistentReservation> reservation;
    if (aptpl) {
        if (!j.contains("registrations") || !j["registrations"].is_array()) {
            return bad("\"registrations\" missing");
        }
        for (const json& e : j["registrations"]) {
            auto nexus = nexus_from(e);
            auto key = e.contains("key") ? key_from(e["key"]) : std::nullopt;
            if (!nexus || !key || *key == 0) {
                return bad("a registration needs initiator_port, relative_target_port and a non-zero key");
            }
            bool all = e.contains("all_tg_pt") && e["all_tg_pt"].is_boolean() && e["all_tg_pt"].get<bool>();
            regs.push_back({*nexus, *key, all});
        }
        if (regs.size() > pr::max_registrations) {
            return bad("too many registrations");
        }
        if (j.contains("reservation") && !j["reservation"].is_null()) {
            const json& res = j["reservation"];
            if (!res.is_object() || !res.contains("type") || !res["type"].is_number_unsigned() ||
                !pr::valid_type(uint8_t(res["type"].get<unsigned>()))) {
                return bad("the reservation has no valid type");
            }
            PersistentReservation pr_res;
            pr_res.type = uint8_t(res["type"].get<unsigned>());
            if (!pr::is_all_registrants(pr_res.type)) {
                auto holder = res.contains("holder") ? nexus_from(res["holder"]) : std::nullopt;
                bool registered = holder && std::any_of(regs.begin(), regs.end(), [&](const Registration& r) {
                                      return r.nexus == *holder;
                                  });
                if (!registered) {
                    return bad("the reservation holder is not registered");
                }
                pr_res.holder = *holder;
            } else if (regs.empty()) {
                return bad("an all-registrants reservation without registrants");
            }
            reservation = pr_res;
        }
    }
    Lock lock(_mutex);
    _registrations = std::move(regs);
    _reservation = reservation;
    _aptpl = aptpl;
    _file_aptpl = aptpl;
    _generation = 0;
    update_active();
    if (aptpl) {
        log_info("{}: persistent reservations restored from {}: {} registrations{}", _name, _state_path,
                 _registrations.size(),
                 _reservation ? fmt::format(", reserved {}", pr::type_name(_reservation->type)) : "");
    }
    return {};
}

} // namespace ispace::scsi
