// Text for HTML and XML (the landing page, SVG flame graphs).
#pragma once

#include <string>
#include <string_view>

namespace kmon {

/// `s` as element text or a quoted attribute value of HTML or XML: & < > " ' as
/// entities, control characters (which XML 1.0 forbids even escaped) as spaces.
std::string MarkupEscape(std::string_view s);

}  // namespace kmon
