// Config sections of collectors that have not landed yet: their keys are known
// (a config written for a later kmon still loads) and their values checked. Each
// moves into its collector's header when the collector lands.
#pragma once

#include <cstdint>
#include <vector>

#include "base/strict_yaml.h"
#include "collectors/collector_config.h"

namespace kmon {

/// collectors.pagecache
struct PagecacheConfig : CollectorSectionOf<PagecacheConfig> {
  static constexpr char kName[] = "pagecache";
};
void ParsePagecacheSection(YamlParser& p, const YamlValue& v, PagecacheConfig* c);

}  // namespace kmon
