// LUN specs: the registry of kinds, the --lun argument forms and the errors users see.
#include "backstore/registry.hpp"
#include "backstore/spec_parse.hpp"
#include "backstore_test_util.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>

using namespace ispace;
using namespace ispace::backstore;

namespace {

std::string error_of(std::string_view text) {
    auto spec = test::builtin_registry().parse(text);
    EXPECT_FALSE(spec.ok()) << text << " parsed";
    return spec.ok() ? std::string() : spec.error().message;
}

bool contains(const std::string& s, std::string_view part) {
    return s.find(part) != std::string::npos;
}

} // namespace

std::string_view kind_of(std::string_view text) {
    static std::vector<std::unique_ptr<Spec>> keep;
    auto spec = test::builtin_registry().parse(text);
    EXPECT_TRUE(spec.ok()) << spec.error().message;
    if (!spec.ok()) {
        return "";
    }
    keep.push_back(std::move(*spec));
    return keep.back()->kind();
}

TEST(DeviceSpec, EachKindReadsItsOwnSpecs) {
    EXPECT_EQ(kind_of("/srv/a.img"), "file");
    EXPECT_EQ(kind_of("memory:1G"), "memory");
    EXPECT_EQ(kind_of("null:1G,block=4096"), "null");
    EXPECT_EQ(kind_of("memoryfile.img"), "file"); // a prefix needs its colon
    EXPECT_EQ(kind_of("/dev/null"), "file");      // a character device: the file kind says no at open
}

TEST(DeviceSpec, TheSpecDescribesItselfAndItsBackingFile) {
    auto spec = test::builtin_registry().parse("/srv/a.img,size=1G,thin");
    ASSERT_TRUE(spec.ok());
    EXPECT_EQ((*spec)->describe(), "/srv/a.img,size=1G,thin");
    EXPECT_EQ((*spec)->backing_file(), "/srv/a.img");
    auto memory = test::builtin_registry().parse("memory:1G");
    ASSERT_TRUE(memory.ok());
    EXPECT_EQ((*memory)->backing_file(), "");
}

TEST(DeviceSpec, KindsAreAnOpenSetRegisteredOnce) {
    Registry registry;
    register_builtin_kinds(registry);
    Kind custom;
    custom.name = "custom";
    custom.syntax = "custom:NAME";
    custom.claims = [](std::string_view text) { return has_prefix(text, "custom"); };
    custom.parse = [](std::string_view text) -> Result<std::unique_ptr<Spec>> {
        return make_error(fmt::format("custom parsed '{}'", text));
    };
    ASSERT_TRUE(registry.add(custom));
    EXPECT_FALSE(registry.add(custom)) << "a second kind of the same name";
    auto parsed = registry.parse("custom:x");
    ASSERT_FALSE(parsed);
    EXPECT_EQ(parsed.error().message, "custom parsed 'custom:x'");
    Kind second_fallback = custom;
    second_fallback.name = "other";
    second_fallback.fallback = true;
    EXPECT_FALSE(registry.add(second_fallback)) << "two kinds cannot both take every other spec";
    EXPECT_NE(registry.syntax_help().find("custom:NAME"), std::string::npos);
}

TEST(DeviceSpec, PathAlone) {
    auto spec = parse_path_spec("/srv/a.img");
    ASSERT_TRUE(spec.ok());
    EXPECT_EQ(spec->path, "/srv/a.img");
    EXPECT_EQ(spec->size, 0u);
    EXPECT_EQ(spec->block_size, 512u);
    EXPECT_FALSE(spec->thin || spec->read_only || spec->direct);
}

TEST(DeviceSpec, PathWithEveryOption) {
    auto spec = parse_path_spec("/srv/a.img,size=1G,block=4096,thin,ro,direct");
    ASSERT_TRUE(spec.ok()) << spec.error().message;
    EXPECT_EQ(spec->path, "/srv/a.img");
    EXPECT_EQ(spec->size, 1ull << 30);
    EXPECT_EQ(spec->block_size, 4096u);
    EXPECT_TRUE(spec->thin);
    EXPECT_TRUE(spec->read_only);
    EXPECT_TRUE(spec->direct);
    auto k = parse_path_spec("disk.img,block=4k");
    ASSERT_TRUE(k.ok());
    EXPECT_EQ(k->block_size, 4096u);
}

TEST(DeviceSpec, MemoryAndNull) {
    auto mem = parse_sized_spec("memory:64M", "memory");
    ASSERT_TRUE(mem.ok());
    EXPECT_EQ(mem->size, 64ull << 20);
    auto null = parse_sized_spec("null:1T,block=4096", "null");
    ASSERT_TRUE(null.ok());
    EXPECT_EQ(null->size, 1ull << 40);
    EXPECT_EQ(null->block_size, 4096u);
}

TEST(DeviceSpec, MemoryAndNullNeedASize) {
    EXPECT_TRUE(contains(error_of("memory:"), "memory needs a size"));
    EXPECT_TRUE(contains(error_of("memory"), "memory needs a size"));
    EXPECT_TRUE(contains(error_of("null:"), "null needs a size"));
    EXPECT_TRUE(contains(error_of("null:0"), "greater than 0"));
    EXPECT_TRUE(contains(error_of("memory:lots"), "bad size 'lots'"));
}

TEST(DeviceSpec, OptionsThatDoNotApplyToMemory) {
    EXPECT_TRUE(contains(error_of("memory:1G,thin"), "option 'thin' applies to files"));
    EXPECT_TRUE(contains(error_of("null:1G,size=2G"), "option 'size'"));
    EXPECT_TRUE(contains(error_of("memory:1G,ro"), "'ro'"));
}

TEST(DeviceSpec, UnknownOptionsAndBadValues) {
    EXPECT_TRUE(contains(error_of("/a.img,sparse"), "unknown option 'sparse'"));
    EXPECT_TRUE(contains(error_of("/a.img,foo=bar"), "unknown option 'foo=bar'"));
    EXPECT_TRUE(contains(error_of("/a.img,block=1024"), "block=1024: the block size must be 512 or 4096"));
    EXPECT_TRUE(contains(error_of("/a.img,block=abc"), "block=abc"));
    EXPECT_TRUE(contains(error_of("/a.img,block="), "block= needs a value"));
    EXPECT_TRUE(contains(error_of("/a.img,size=12Q"), "bad size '12Q'"));
    EXPECT_TRUE(contains(error_of("/a.img,size="), "size= needs a value"));
    EXPECT_TRUE(contains(error_of("/a.img,size=0"), "size=0"));
    EXPECT_TRUE(contains(error_of("/a.img,thin=yes"), "'thin' takes no value"));
    EXPECT_TRUE(contains(error_of("/a.img,,thin"), "empty option"));
    EXPECT_TRUE(contains(error_of("/a.img,thin,thin"), "given twice"));
    EXPECT_TRUE(contains(error_of("/a.img,size=1G,size=2G"), "given twice"));
    EXPECT_TRUE(contains(error_of(""), "empty"));
    EXPECT_TRUE(contains(error_of(",size=1G"), "empty path"));
}

TEST(DeviceSpec, SizeMustBeAWholeNumberOfBlocks) {
    std::string e = error_of("/a.img,size=1000");
    EXPECT_TRUE(contains(e, "1000 bytes) is not a multiple of the 512-byte block size")) << e;
    EXPECT_TRUE(contains(error_of("memory:6k,block=4096"), "not a multiple of the 4096-byte block size"));
    EXPECT_TRUE(test::builtin_registry().parse("memory:8k,block=4096").ok());
}

TEST(DeviceSpec, ErrorsQuoteTheWholeSpec) {
    EXPECT_TRUE(contains(error_of("/srv/x.img,bogus"), "device '/srv/x.img,bogus'"));
}

// A LUN resized at run time is written back to the configuration with its new size, so that the next
// start asks for the size the LUN has (a file larger than its size= is refused at start-up).
TEST(DeviceSpec, ResizedSpecsNameTheNewSize) {
    auto respec = [](std::string_view text, uint64_t bytes) {
        auto spec = test::builtin_registry().parse(text);
        EXPECT_TRUE(spec.ok()) << spec.error().message;
        return spec.ok() ? (*spec)->with_size(bytes) : std::string();
    };
    EXPECT_EQ(respec("/srv/a.img,size=64M,thin", 512u << 20), "/srv/a.img,size=512M,thin");
    EXPECT_EQ(respec("/srv/a.img,thin", 3u << 30), "/srv/a.img,thin,size=3G");
    EXPECT_EQ(respec("memory:64M,block=4096", 1ull << 40), "memory:1T,block=4096");
    EXPECT_EQ(respec("null:1G", 1536u << 10), "null:1536K");
    EXPECT_EQ(respec("memory:1G", 1001 * 512), "memory:512512");
    // The new text reads back as the size asked for.
    auto again = test::builtin_registry().parse(respec("/srv/a.img,size=64M", 512u << 20));
    ASSERT_TRUE(again.ok());
    EXPECT_EQ((*again)->size(), std::optional<uint64_t>(512u << 20));
}

TEST(DeviceSpec, OnlyKindsWhoseDataOutlivesTheProcessKeepData) {
    for (auto [text, keeps] : {std::pair{"/srv/a.img", true}, {"memory:1G", false}, {"null:1G", false}}) {
        auto spec = test::builtin_registry().parse(text);
        ASSERT_TRUE(spec.ok());
        EXPECT_EQ((*spec)->keeps_data(), keeps) << text;
    }
}
