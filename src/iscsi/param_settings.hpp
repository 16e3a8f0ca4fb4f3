// Operational parameters as an administrator sets and reads them, by their RFC 7143 §13 key names:
//  - defaults for new sessions (`ispace param set KEY=VALUE`): one key of a NegotiationConfig;
//  - a running session (`ispace param set --session TSIH KEY=VALUE`): which keys RFC 7143 lets the
//    target declare again in full feature phase, and why the others cannot change;
//  - what a session negotiated, as key=value text (`ispace session list`).
// Everything is read off the key table in params.cpp (use, sender, range), so a key's rules are
// written once.
#pragma once

#include "common/result.hpp"
#include "iscsi/params.hpp"
#include "iscsi/text.hpp"

#include <string_view>
#include <vector>

namespace ispace::iscsi {

// Sets `key` (e.g. "ImmediateData") to `value` ("No") in `config`, checking the value against the
// key's syntax and range and then the whole config (FirstBurstLength <= MaxBurstLength). On error
// `config` is unchanged and the message says what is allowed.
Result<void> set_negotiation_key(NegotiationConfig& config, std::string_view key, std::string_view value);
// The keys set_negotiation_key() accepts, in table order.
std::vector<std::string_view> settable_negotiation_keys();
// `key=value` for every settable key, as `config` has it (the digest lists in order of preference).
KeyValueList describe(const NegotiationConfig& config);

// Whether the target may declare `key` anew in a running session (RFC 7143 §13: Use "ALL" or "FFPO",
// sent by the target, and not a SendTargets answer): today MaxRecvDataSegmentLength and TargetAlias.
// The error says which rule forbids it (login only, leading connection only, the initiator's key).
Result<void> check_renegotiable(std::string_view key, std::string_view value);

// What a session negotiated, by key name: every session-wide key and the names and aliases.
KeyValueList describe(const SessionParams& session);
// A connection's keys as the target sees them: the digests, and MaxRecvDataSegmentLength as the target
// declared it (the most the initiator may send it); `initiator` gets the initiator's declaration.
KeyValueList describe(const ConnectionParams& connection, KeyValueList* initiator = nullptr);

} // namespace ispace::iscsi
