// SCSI helpers of the public API: CDB builders, sense decoding, names for device types and statuses.
#include "common/bytes.hpp"
#include "ispace/initiator.hpp"

#include <fmt/format.h>

namespace ispace::initiator {

namespace {

const char* sense_key_name(uint8_t key) {
    static const char* const names[16] = {
        "NO SENSE",        "RECOVERED ERROR", "NOT READY",      "MEDIUM ERROR",
        "HARDWARE ERROR",  "ILLEGAL REQUEST", "UNIT ATTENTION", "DATA PROTECT",
        "BLANK CHECK",     "VENDOR SPECIFIC", "COPY ABORTED",   "ABORTED COMMAND",
        "reserved (0x0c)", "VOLUME OVERFLOW", "MISCOMPARE",     "COMPLETED",
    };
    return names[key & 0x0f];
}

// The additional sense codes a user of this library is likely to meet (SPC-4 Annex D).
const char* asc_name(uint8_t asc, uint8_t ascq) {
    struct Entry {
        uint8_t asc;
        uint8_t ascq;
        const char* text;
    };
    static const Entry table[] = {
        {0x04, 0x00, "logical unit not ready"},
        {0x04, 0x01, "logical unit becoming ready"},
        {0x04, 0x02, "logical unit not ready, initializing command required"},
        {0x0c, 0x00, "write error"},
        {0x11, 0x00, "unrecovered read error"},
        {0x1a, 0x00, "parameter list length error"},
        {0x20, 0x00, "invalid command operation code"},
        {0x21, 0x00, "logical block address out of range"},
        {0x24, 0x00, "invalid field in CDB"},
        {0x25, 0x00, "logical unit not supported"},
        {0x26, 0x00, "invalid field in parameter list"},
        {0x27, 0x00, "write protected"},
        {0x28, 0x00, "not ready to ready change, medium may have changed"},
        {0x29, 0x00, "power on, reset, or bus device reset occurred"},
        {0x29, 0x01, "power on occurred"},
        {0x29, 0x02, "SCSI bus reset occurred"},
        {0x29, 0x03, "bus device reset function occurred"},
        {0x29, 0x07, "I_T nexus loss occurred"},
        {0x2a, 0x01, "mode parameters changed"},
        {0x2a, 0x03, "reservations preempted"},
        {0x2a, 0x09, "capacity data has changed"},
        {0x2f, 0x00, "commands cleared by another initiator"},
        {0x3a, 0x00, "medium not present"},
        {0x3f, 0x0e, "reported LUNs data has changed"},
        {0x44, 0x00, "internal target failure"},
        {0x47, 0x00, "SCSI parity error"},
        {0x49, 0x00, "invalid message error"},
        {0x4b, 0x00, "data phase error"},
        {0x55, 0x03, "insufficient resources"},
    };
    for (const auto& e : table) {
        if (e.asc == asc && e.ascq == ascq) {
            return e.text;
        }
    }
    return nullptr;
}

Command make_rw(uint64_t lun, uint64_t lba, uint32_t blocks, bool write) {
    Command c;
    c.lun = lun;
    if (lba + blocks <= 0xffffffffull && blocks <= 0xffff) {
        c.cdb[0] = write ? 0x2a : 0x28; // WRITE(10) / READ(10)
        store_be32(&c.cdb[2], uint32_t(lba));
        store_be16(&c.cdb[7], uint16_t(blocks));
        c.cdb_length = 10;
    } else {
        c.cdb[0] = write ? 0x8a : 0x88; // WRITE(16) / READ(16)
        store_be64(&c.cdb[2], lba);
        store_be32(&c.cdb[10], blocks);
        c.cdb_length = 16;
    }
    c.direction = write ? DataDirection::write : DataDirection::read;
    return c;
}

} // namespace

std::optional<SenseKey> parse_sense(std::span<const uint8_t> sense) {
    if (sense.size() < 2) {
        return std::nullopt;
    }
    uint8_t code = sense[0] & 0x7f;
    SenseKey k;
    if (code == 0x70 || code == 0x71) {
        if (sense.size() < 3) {
            return std::nullopt;
        }
        k.key = sense[2] & 0x0f;
        k.asc = sense.size() > 12 ? sense[12] : 0;
        k.ascq = sense.size() > 13 ? sense[13] : 0;
        return k;
    }
    if (code == 0x72 || code == 0x73) {
        k.key = sense[1] & 0x0f;
        k.asc = sense.size() > 2 ? sense[2] : 0;
        k.ascq = sense.size() > 3 ? sense[3] : 0;
        return k;
    }
    return std::nullopt;
}

std::string describe_sense(std::span<const uint8_t> sense) {
    auto k = parse_sense(sense);
    if (!k) {
        return sense.empty() ? "no sense data" : "unrecognised sense data";
    }
    const char* text = asc_name(k->asc, k->ascq);
    if (text != nullptr) {
        return fmt::format("{}, asc/ascq {:02x}/{:02x} ({})", sense_key_name(k->key), k->asc, k->ascq, text);
    }
    return fmt::format("{}, asc/ascq {:02x}/{:02x}", sense_key_name(k->key), k->asc, k->ascq);
}

std::string device_type_name(uint8_t type) {
    switch (type) {
    case 0x00:
        return "disk";
    case 0x01:
        return "tape";
    case 0x03:
        return "processor";
    case 0x05:
        return "cd/dvd";
    case 0x07:
        return "optical";
    case 0x08:
        return "changer";
    case 0x0c:
        return "controller";
    case 0x0d:
        return "enclosure";
    case 0x0e:
        return "rbc";
    case 0x1f:
        return "unknown";
    default:
        return fmt::format("type {:#04x}", type);
    }
}

std::string CommandResult::describe() const {
    if (error) {
        return error->message;
    }
    switch (status) {
    case 0x00:
        return "GOOD";
    case 0x02:
        return "CHECK CONDITION: " + describe_sense(sense);
    case 0x04:
        return "CONDITION MET";
    case 0x08:
        return "BUSY";
    case 0x18:
        return "RESERVATION CONFLICT";
    case 0x28:
        return "TASK SET FULL";
    case 0x30:
        return "ACA ACTIVE";
    case 0x40:
        return "TASK ABORTED";
    default:
        return fmt::format("SCSI status {:#04x}", status);
    }
}

Command make_read(uint64_t lun, uint64_t lba, uint32_t blocks, uint32_t block_size, Buffer buffer) {
    Command c = make_rw(lun, lba, blocks, false);
    size_t bytes = size_t(blocks) * block_size;
    if (!buffer || buffer.size() != bytes) {
        buffer = Buffer::allocate(bytes);
    }
    c.data = std::move(buffer);
    return c;
}

Command make_write(uint64_t lun, uint64_t lba, uint32_t blocks, uint32_t block_size, Buffer data) {
    Command c = make_rw(lun, lba, blocks, true);
    (void)block_size;
    c.data = std::move(data);
    return c;
}

} // namespace ispace::initiator
