// Config sections of collectors that have not landed yet: their keys are known
// (a config written for a later kmon still loads) and their values checked. Each
// moves into its collector's header when the collector lands.
#pragma once

#include <cstdint>
#include <vector>

#include "base/strict_yaml.h"
#include "collectors/collector_config.h"

namespace kmon {

/// collectors.dns
struct DnsConfig : CollectorSectionOf<DnsConfig> {
  static constexpr char kName[] = "dns";
  std::vector<uint16_t> ports{53};
};
void ParseDnsSection(YamlParser& p, const YamlValue& v, DnsConfig* c);

}  // namespace kmon
