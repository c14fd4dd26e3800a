#include "collectors/pending_sections.h"

#include "collectors/collector.h"

namespace kmon {

void ParsePagecacheSection(YamlParser& p, const YamlValue& v, PagecacheConfig* c) {
  ParseEnabledOnlySection(p, v, c);
}

}  // namespace kmon
