// ispace::Result is public API now (include/ispace/result.hpp): the initiator's public header hands it
// to users, and a public header may include only public ones. This forwarder keeps "common/result.hpp"
// valid for the files of work in flight on other branches (backstore, the target front end); it goes
// once they have merged. New code includes "ispace/result.hpp".
#pragma once

#include "ispace/result.hpp"
