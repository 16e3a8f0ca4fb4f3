// ispace::Buffer is public API now (include/ispace/buffer.hpp): the initiator's public header hands it
// to users, and a public header may include only public ones. This forwarder keeps "common/buffer.hpp"
// valid for the files of work in flight on other branches (backstore, the target front end); it goes
// once they have merged. New code includes "ispace/buffer.hpp".
#pragma once

#include "ispace/buffer.hpp"
