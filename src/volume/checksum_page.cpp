#include "volume/checksum_page.hpp"

#include "common/bytes.hpp"

namespace ispace::volume {

namespace {

constexpr uint64_t check_at = checksum_page_bytes - 4;

uint32_t page_check(uint64_t page, const uint8_t* bytes) {
    return label_crc32c(bytes, check_at, uint32_t(page) ^ uint32_t(page >> 32));
}

} // namespace

uint32_t checksum_page_entry(const uint8_t* page, uint64_t e) {
    return load_le32(page + e * 4);
}

void set_checksum_page_entry(uint8_t* page, uint64_t e, uint32_t sum) {
    store_le32(page + e * 4, sum);
}

void seal_checksum_page(ChecksumPageFormat format, uint64_t page, uint8_t* bytes) {
    if (format == ChecksumPageFormat::checked) {
        store_le32(bytes + check_at, page_check(page, bytes));
    }
}

bool checksum_page_sound(ChecksumPageFormat format, uint64_t page, const uint8_t* bytes) {
    return format == ChecksumPageFormat::bare || load_le32(bytes + check_at) == page_check(page, bytes);
}

} // namespace ispace::volume
