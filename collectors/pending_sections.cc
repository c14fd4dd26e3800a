#include "collectors/pending_sections.h"

#include "collectors/collector.h"

namespace kmon {

void ParseDnsSection(YamlParser& p, const YamlValue& v, DnsConfig* c) {
  p.Map(v, {
               {"enabled", [&](const YamlValue& f) { p.Bool(f, &c->enabled); }},
               {"ports", [&](const YamlValue& f) { p.PortSet(f, &c->ports); }},
           });
}

}  // namespace kmon
