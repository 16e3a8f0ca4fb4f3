// SCSI helpers of the public API: CDB builders, sense decoding, names for device types and statuses.
// The vocabulary itself (opcodes, CDB layouts, sense formats, status names, ASC texts) is scsi_spec's.
#include "initiator/scsi.hpp"

#include "ispace/initiator.hpp"
#include "scsi_spec/cdb.hpp"
#include "scsi_spec/opcodes.hpp"
#include "scsi_spec/sam.hpp"
#include "scsi_spec/sense.hpp"

#include <fmt/format.h>

namespace ispace::initiator {

std::optional<Sense> parse_sense(std::span<const uint8_t> sense) {
    auto s = scsi::parse_sense(sense);
    if (!s) {
        return std::nullopt;
    }
    return Sense{uint8_t(s->key), s->asc(), s->ascq()};
}

std::string describe_sense(std::span<const uint8_t> sense) {
    return scsi::describe_sense(sense);
}

std::string device_type_name(uint8_t type) {
    namespace dt = scsi::device_type;
    switch (type) {
    case dt::direct_access_block:
        return "disk";
    case dt::sequential_access:
        return "tape";
    case dt::processor:
        return "processor";
    case dt::cd_dvd:
        return "cd/dvd";
    case dt::optical_memory:
        return "optical";
    case dt::media_changer:
        return "changer";
    case dt::storage_array_controller:
        return "controller";
    case dt::enclosure_services:
        return "enclosure";
    case dt::simplified_direct_access:
        return "rbc";
    case dt::unknown:
        return "unknown";
    default:
        return fmt::format("type {:#04x}", type);
    }
}

std::string Response::describe() const {
    if (error) {
        return error->message;
    }
    auto scsi_status = scsi::Status(status);
    if (scsi_status == scsi::Status::check_condition) {
        return fmt::format("{}: {}", scsi::status_name(scsi_status), describe_sense(sense));
    }
    const char* name = scsi::status_name(scsi_status);
    return name != nullptr ? std::string(name) : fmt::format("SCSI status {:#04x}", status);
}

Request make_request(uint64_t lun, const scsi::Cdb& cdb, DataDirection direction, Buffer data) {
    Request c;
    c.lun = lun;
    c.cdb = cdb.bytes;
    c.cdb_length = cdb.length;
    c.direction = direction;
    c.data = std::move(data);
    return c;
}

Request make_read(uint64_t lun, uint64_t lba, uint32_t blocks, uint32_t block_size, Buffer buffer) {
    size_t bytes = size_t(blocks) * block_size;
    if (!buffer || buffer.size() != bytes) {
        buffer = Buffer::allocate(bytes);
    }
    return make_request(lun, scsi::cdb::read(lba, blocks), DataDirection::read, std::move(buffer));
}

Request make_write(uint64_t lun, uint64_t lba, uint32_t blocks, uint32_t block_size, Buffer data) {
    (void)block_size;
    return make_request(lun, scsi::cdb::write(lba, blocks), DataDirection::write, std::move(data));
}

} // namespace ispace::initiator
