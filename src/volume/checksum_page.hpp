// The 4 KiB pages of a checksums area as a member holds them (docs/integrity.md, "What is stored"). Bytes
// read from a member are hostile: a page is only ever trusted after checksum_page_sound() says so.
//
// checked format (label bit feature::incompat::checksum_pages): entries 0-1022 are little-endian u32s at
// bytes 0-4091, and bytes 4092-4095 are a CRC32C of bytes 0-4091 seeded with the page's number in the area
// (as block checksums are seeded with the block's), so a rotted page, a page torn by a crash (half old,
// half new) and a page written at another page's place all fail it. bare format (spaces made before the
// bit): 1024 entries and nothing else; every page passes.
#pragma once

#include "volume/label.hpp"

#include <cstdint>

namespace ispace::volume {

// Entry `e` (< checksum_entries_per_page) of a page.
uint32_t checksum_page_entry(const uint8_t* page, uint64_t e);
void set_checksum_page_entry(uint8_t* page, uint64_t e, uint32_t sum);
// Puts page number `page`'s own check over its entries as they are now (nothing to do for bare pages).
void seal_checksum_page(ChecksumPageFormat format, uint64_t page, uint8_t* bytes);
// Whether the checksum_page_bytes at `bytes`, read as page `page` of an area, check.
bool checksum_page_sound(ChecksumPageFormat format, uint64_t page, const uint8_t* bytes);

} // namespace ispace::volume
