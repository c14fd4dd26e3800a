#include "collectors/offcpu/offcpu_render.h"

#include <absl/strings/str_cat.h>
#include <absl/strings/str_join.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <memory>
#include <unordered_map>
#include <utility>
#include <vector>

#include "base/gzip.h"
#include "base/markup.h"
#include "collectors/offcpu/profile.pb.h"

namespace kmon {
namespace {

std::string CleanFrame(const std::string& name) {
  std::string out = name;
  for (char& c : out) {
    if (c == ';') c = ':';
    if (c == '\n' || c == '\r') c = ' ';
  }
  return out;
}

std::string HumanNs(uint64_t ns) {
  char buf[64];
  if (ns >= 1000000000ULL) {
    std::snprintf(buf, sizeof buf, "%.3f s", ns / 1e9);
  } else if (ns >= 1000000ULL) {
    std::snprintf(buf, sizeof buf, "%.3f ms", ns / 1e6);
  } else {
    std::snprintf(buf, sizeof buf, "%.3f us", ns / 1e3);
  }
  return buf;
}

std::string Fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

// ---- flame graph layout ----

enum class FrameKind { kAll = 0, kWorkload = 1, kUser = 2, kKernel = 3, kProcess = 4 };

struct Node {
  std::string name;
  FrameKind kind = FrameKind::kAll;
  uint64_t ns = 0, count = 0;
  std::map<std::pair<std::string, int>, std::unique_ptr<Node>> children;  // sorted by name

  Node() = default;
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;
  // Torn down without recursion: a tree is as deep as its deepest stack (hundreds of
  // frames), and /debug/offcpu runs on an HTTP worker thread with a small stack.
  ~Node() {
    std::vector<std::unique_ptr<Node>> pending;
    for (auto& [k, c] : children) pending.push_back(std::move(c));
    children.clear();
    while (!pending.empty()) {
      std::unique_ptr<Node> n = std::move(pending.back());
      pending.pop_back();
      for (auto& [k, c] : n->children) pending.push_back(std::move(c));
      n->children.clear();
    }
  }

  Node* Child(const std::string& n, FrameKind k) {
    auto& c = children[{n, static_cast<int>(k)}];
    if (!c) {
      c = std::make_unique<Node>();
      c->name = n;
      c->kind = k;
    }
    return c.get();
  }
};

constexpr int kSvgWidth = 1200;
constexpr int kXPad = 10;
constexpr int kFrameHeight = 16;
constexpr int kPadTop = 60;
constexpr int kPadBottom = 36;
constexpr double kFontSize = 12;
constexpr double kCharWidth = kFontSize * 0.59;  // Verdana's average advance
constexpr double kMinWidthPx = 0.1;

// FNV-1a: a stable hash, so a frame keeps its colour from one render to the next.
uint32_t Fnv(const std::string& s, uint32_t seed) {
  uint32_t h = 2166136261u ^ seed;
  for (unsigned char c : s) {
    h ^= c;
    h *= 16777619u;
  }
  return h;
}

std::string Colour(const Node& n) {
  double v1 = (Fnv(n.name, 1) % 1000) / 1000.0;
  double v2 = (Fnv(n.name, 2) % 1000) / 1000.0;
  int r, g, b;
  switch (n.kind) {
    case FrameKind::kKernel:  // off-CPU blues, as in Gregg's off-CPU flame graphs
      r = 80 + static_cast<int>(60 * v1);
      g = r;
      b = 190 + static_cast<int>(55 * v2);
      break;
    case FrameKind::kUser:  // aqua
      r = 50 + static_cast<int>(60 * v1);
      g = 165 + static_cast<int>(55 * v2);
      b = 165 + static_cast<int>(55 * v2);
      break;
    case FrameKind::kProcess:  // yellow-green: which process of it
      r = 170 + static_cast<int>(40 * v1);
      g = 200 + static_cast<int>(30 * v2);
      b = 80 + static_cast<int>(40 * v1);
      break;
    case FrameKind::kWorkload:  // green: whose time it is
      r = 90 + static_cast<int>(50 * v1);
      g = 190 + static_cast<int>(40 * v2);
      b = 90 + static_cast<int>(40 * v1);
      break;
    default:
      r = g = b = 200;
  }
  return absl::StrCat("rgb(", r, ",", g, ",", b, ")");
}

// Same rule as the script's fit(): what of a name fits in `px`.
std::string FitText(const std::string& name, double px) {
  int n = static_cast<int>((px - 6) / kCharWidth);
  if (n < 3) return "";
  if (static_cast<int>(name.size()) <= n) return name;
  return name.substr(0, n - 2) + "..";
}

// Depth-first without recursion (see ~Node).
int Depth(const Node& root) {
  int deepest = 0;
  std::vector<std::pair<const Node*, int>> todo{{&root, 0}};
  while (!todo.empty()) {
    auto [n, d] = todo.back();
    todo.pop_back();
    deepest = std::max(deepest, d);
    for (const auto& [k, c] : n->children) todo.emplace_back(c.get(), d + 1);
  }
  return deepest;
}

// Every frame wide enough to see, parents before their children and children in
// name order (the order of a recursive walk), without recursion (see ~Node).
void EmitFrames(const Node& root, uint64_t total, int height, std::string* out) {
  const double frame_px = static_cast<double>(kSvgWidth - 2 * kXPad);
  struct Todo {
    const Node* n;
    int depth;
    uint64_t x_ns;
  };
  std::vector<Todo> todo{{&root, 0, 0}};
  std::vector<Todo> kids;
  while (!todo.empty()) {
    const Todo t = todo.back();
    todo.pop_back();
    const Node& n = *t.n;
    const double xf = static_cast<double>(t.x_ns) / total;
    const double wf = static_cast<double>(n.ns) / total;
    const double wpx = wf * frame_px;
    if (wpx < kMinWidthPx) continue;  // too thin to see; its children are thinner
    const double xpx = kXPad + xf * frame_px;
    const int y = height - kPadBottom - (t.depth + 1) * kFrameHeight;
    const std::string name = MarkupEscape(n.name);
    const std::string info = absl::StrCat(name, " (", HumanNs(n.ns), ", ", n.count,
                                          n.count == 1 ? " episode, " : " episodes, ",
                                          Fixed(100.0 * n.ns / total, 2), "%)");
    absl::StrAppend(
        out, "<g class=\"f\" data-d=\"", t.depth, "\" data-x=\"", Fixed(xf, 9), "\" data-w=\"",
        Fixed(wf, 9), "\" data-n=\"", name, "\"><title>", info, "</title><rect x=\"", Fixed(xpx, 2),
        "\" y=\"", y, "\" width=\"", Fixed(wpx, 2), "\" height=\"", kFrameHeight - 1, "\" fill=\"",
        Colour(n), "\" rx=\"2\" ry=\"2\"/><text x=\"", Fixed(xpx + 3, 2), "\" y=\"",
        y + kFrameHeight - 4, "\">", MarkupEscape(FitText(n.name, wpx)), "</text></g>\n");
    kids.clear();
    uint64_t cx = t.x_ns;
    for (const auto& [k, c] : n.children) {
      kids.push_back({c.get(), t.depth + 1, cx});
      cx += c->ns;
    }
    todo.insert(todo.end(), kids.rbegin(), kids.rend());  // the first child comes off next
  }
}

// The interactive part, after flamegraph.pl's: zoom on click, regexp search with the
// share of matched time, details of the frame under the pointer.
constexpr char kFlameScript[] = R"JS(
"use strict";
var W = 1200, XPAD = 10, FW = W - 2 * XPAD, CHAR = 12 * 0.59;
var frames = [], details, matched, searchbtn, unzoombtn, zoomed = null, searching = null;
function init(evt) {
  details = document.getElementById("details").firstChild;
  matched = document.getElementById("matched").firstChild;
  searchbtn = document.getElementById("search");
  unzoombtn = document.getElementById("unzoom");
  var gs = document.getElementsByTagName("g");
  for (var i = 0; i < gs.length; i++) {
    var g = gs[i];
    if (g.getAttribute("class") !== "f") continue;
    var f = {g: g, r: g.getElementsByTagName("rect")[0], t: g.getElementsByTagName("text")[0],
             info: g.getElementsByTagName("title")[0].textContent, n: g.getAttribute("data-n"),
             x: +g.getAttribute("data-x"), w: +g.getAttribute("data-w"), d: +g.getAttribute("data-d")};
    f.fill = f.r.getAttribute("fill");
    frames.push(f);
    g.addEventListener("click", (function(f) { return function() { zoom(f.d === 0 ? null : f); }; })(f));
    g.addEventListener("mouseover", (function(f) { return function() { details.nodeValue = f.info; }; })(f));
    g.addEventListener("mouseout", function() { details.nodeValue = " "; });
  }
  searchbtn.addEventListener("click", function() { if (searching) resetSearch(); else askSearch(); });
  unzoombtn.addEventListener("click", function() { zoom(null); });
  window.addEventListener("keydown", function(e) {
    if ((e.ctrlKey || e.metaKey) && e.key === "f") { e.preventDefault(); askSearch(); }
    if (e.key === "Escape") { resetSearch(); zoom(null); }
  });
}
function fit(name, px) {
  var n = Math.floor((px - 6) / CHAR);
  if (n < 3) return "";
  return name.length <= n ? name : name.substring(0, n - 2) + "..";
}
function place(f, x, w, faded) {
  var px = w * FW;
  if (px < 0.1) { f.g.style.display = "none"; return; }
  var rx = XPAD + x * FW;
  f.g.style.display = "";
  f.g.style.opacity = faded ? "0.6" : "1";
  f.r.setAttribute("x", rx.toFixed(2));
  f.r.setAttribute("width", px.toFixed(2));
  f.t.setAttribute("x", (rx + 3).toFixed(2));
  f.t.textContent = fit(f.n, px);
}
function zoom(z) {
  var eps = 1e-9;
  zoomed = z;
  unzoombtn.style.display = z ? "" : "none";
  for (var i = 0; i < frames.length; i++) {
    var f = frames[i];
    if (!z) { place(f, f.x, f.w, false); continue; }
    if (f.d < z.d) {
      // An ancestor of the zoomed frame spans the width; anything else at its depth goes.
      if (f.x <= z.x + eps && f.x + f.w >= z.x + z.w - eps) place(f, 0, 1, true);
      else f.g.style.display = "none";
    } else if (f.x >= z.x - eps && f.x + f.w <= z.x + z.w + eps) {
      place(f, (f.x - z.x) / z.w, f.w / z.w, false);
    } else {
      f.g.style.display = "none";
    }
  }
  if (searching) search(searching);
}
function askSearch() {
  var term = window.prompt("Search for frames matching (regular expression):", searching || "");
  if (term) search(term);
}
function search(term) {
  var re;
  try { re = new RegExp(term); } catch (e) { window.alert("Not a regular expression: " + e.message); return; }
  searching = term;
  searchbtn.firstChild.nodeValue = "Reset Search";
  var lo = zoomed ? zoomed.x : 0, hi = zoomed ? zoomed.x + zoomed.w : 1, ranges = [];
  for (var i = 0; i < frames.length; i++) {
    var f = frames[i];
    if (re.test(f.n)) {
      f.r.setAttribute("fill", "rgb(230,0,230)");
      var a = Math.max(f.x, lo), b = Math.min(f.x + f.w, hi);
      if (b > a) ranges.push([a, b]);
    } else {
      f.r.setAttribute("fill", f.fill);
    }
  }
  // Nested matches (a frame and its callee) count once: merge the ranges.
  ranges.sort(function(p, q) { return p[0] - q[0]; });
  var sum = 0, end = -1;
  for (var j = 0; j < ranges.length; j++) {
    var s = Math.max(ranges[j][0], end), e = ranges[j][1];
    if (e > s) sum += e - s;
    end = Math.max(end, e);
  }
  matched.nodeValue = "Matched: " + (100 * sum / (hi - lo)).toFixed(1) + "%";
}
function resetSearch() {
  searching = null;
  searchbtn.firstChild.nodeValue = "Search";
  matched.nodeValue = " ";
  for (var i = 0; i < frames.length; i++) frames[i].r.setAttribute("fill", frames[i].fill);
}
)JS";

// ---- pprof ----

class StringTable {
 public:
  explicit StringTable(perftools::profiles::Profile* p) : p_(p) { Id(""); }
  int64_t Id(const std::string& s) {
    auto it = ids_.find(s);
    if (it != ids_.end()) return it->second;
    int64_t id = p_->string_table_size();
    p_->add_string_table(s);
    ids_.emplace(s, id);
    return id;
  }

 private:
  perftools::profiles::Profile* p_;
  std::unordered_map<std::string, int64_t> ids_;
};

}  // namespace

std::string WorkloadFrame(const WorkloadLabels& l) {
  if (l.pod.empty()) return l.container;
  return absl::StrCat(l.namespace_, "/", l.pod, "/", l.container);
}

std::string RenderFolded(const std::vector<OffCpuStack>& stacks) {
  std::map<std::string, uint64_t> lines;
  for (const auto& s : stacks) {
    std::vector<std::string> frames{CleanFrame(WorkloadFrame(s.labels))};
    if (!s.process.empty()) frames.push_back(CleanFrame(s.process));
    for (const auto& f : s.user) frames.push_back(CleanFrame(f));
    for (const auto& f : s.kernel) frames.push_back(CleanFrame(f));
    lines[absl::StrJoin(frames, ";")] += s.ns;
  }
  std::string out;
  for (const auto& [stack, ns] : lines) absl::StrAppend(&out, stack, " ", ns, "\n");
  return out;
}

std::string RenderFlameGraphSvg(const std::vector<OffCpuStack>& stacks, const std::string& title,
                                const std::string& subtitle) {
  Node root;
  root.name = "all";
  for (const auto& s : stacks) {
    if (s.ns == 0) continue;
    root.ns += s.ns;
    root.count += s.count;
    Node* n = root.Child(WorkloadFrame(s.labels), FrameKind::kWorkload);
    n->ns += s.ns;
    n->count += s.count;
    if (!s.process.empty()) {
      n = n->Child(s.process, FrameKind::kProcess);
      n->ns += s.ns;
      n->count += s.count;
    }
    for (const auto& f : s.user) {
      n = n->Child(f, FrameKind::kUser);
      n->ns += s.ns;
      n->count += s.count;
    }
    for (const auto& f : s.kernel) {
      n = n->Child(f, FrameKind::kKernel);
      n->ns += s.ns;
      n->count += s.count;
    }
  }
  const int depth = root.ns ? Depth(root) + 1 : 1;
  const int height = kPadTop + depth * kFrameHeight + kPadBottom;
  std::string out;
  absl::StrAppend(
      &out, "<?xml version=\"1.0\" standalone=\"no\"?>\n", "<svg version=\"1.1\" width=\"",
      kSvgWidth, "\" height=\"", height, "\" viewBox=\"0 0 ", kSvgWidth, " ", height,
      "\" onload=\"init(evt)\" xmlns=\"http://www.w3.org/2000/svg\" "
      "xmlns:xlink=\"http://www.w3.org/1999/xlink\">\n",
      "<style type=\"text/css\">\n"
      "text { font-family: Verdana, sans-serif; font-size: 12px; fill: rgb(0,0,0); }\n"
      "#title { text-anchor: middle; font-size: 17px; }\n"
      "#subtitle { text-anchor: middle; fill: rgb(90,90,90); }\n"
      "#search, #unzoom { cursor: pointer; }\n"
      ".f:hover rect { stroke: rgb(0,0,0); stroke-width: 0.5; cursor: pointer; }\n"
      "</style>\n",
      "<script type=\"text/ecmascript\"><![CDATA[", kFlameScript, "]]></script>\n",
      "<rect x=\"0\" y=\"0\" width=\"", kSvgWidth, "\" height=\"", height,
      "\" fill=\"rgb(248,248,252)\"/>\n", "<text id=\"title\" x=\"", kSvgWidth / 2, "\" y=\"24\">",
      MarkupEscape(title), "</text>\n", "<text id=\"subtitle\" x=\"", kSvgWidth / 2, "\" y=\"44\">",
      MarkupEscape(subtitle), "</text>\n", "<text id=\"unzoom\" x=\"", kXPad,
      "\" y=\"24\" style=\"display:none\">Reset Zoom</text>\n", "<text id=\"search\" x=\"",
      kSvgWidth - kXPad - 100, "\" y=\"24\">Search</text>\n", "<text id=\"matched\" x=\"",
      kSvgWidth - kXPad - 140, "\" y=\"", height - 12, "\"> </text>\n", "<text id=\"details\" x=\"",
      kXPad, "\" y=\"", height - 12, "\"> </text>\n");
  if (root.ns == 0) {
    absl::StrAppend(&out, "<text x=\"", kSvgWidth / 2, "\" y=\"", kPadTop + 12,
                    "\" style=\"text-anchor: middle\">No off-CPU stacks recorded</text>\n");
  } else {
    out += "<g id=\"frames\">\n";
    EmitFrames(root, root.ns, height, &out);
    out += "</g>\n";
  }
  out += "</svg>\n";
  return out;
}

absl::StatusOr<std::string> RenderPprof(const std::vector<OffCpuStack>& stacks, int64_t time_nanos,
                                        int64_t duration_nanos) {
  perftools::profiles::Profile p;
  StringTable strings(&p);
  auto* episodes = p.add_sample_type();
  episodes->set_type(strings.Id("episodes"));
  episodes->set_unit(strings.Id("count"));
  auto* offcpu = p.add_sample_type();
  offcpu->set_type(strings.Id("offcpu"));
  offcpu->set_unit(strings.Id("nanoseconds"));
  p.mutable_period_type()->set_type(strings.Id("offcpu"));
  p.mutable_period_type()->set_unit(strings.Id("nanoseconds"));
  p.set_period(1);
  p.set_default_sample_type(strings.Id("offcpu"));
  p.set_time_nanos(time_nanos);
  p.set_duration_nanos(duration_nanos);
  p.add_comment(strings.Id(
      "kmon off-CPU profile: time blocked from switch-out to wakeup, episodes >= offcpu_min"));
  // Frames are already names: one pseudo mapping that says so, so pprof does not try
  // to symbolize the (absent) addresses.
  auto* mapping = p.add_mapping();
  mapping->set_id(1);
  mapping->set_filename(strings.Id("[kmon]"));
  mapping->set_has_functions(true);

  // One Function and one Location per distinct (name, kind) frame.
  std::map<std::pair<std::string, FrameKind>, uint64_t> location_of;
  auto location = [&](const std::string& name, FrameKind kind) -> uint64_t {
    auto [it, inserted] = location_of.emplace(std::make_pair(name, kind), location_of.size() + 1);
    if (inserted) {
      const uint64_t id = it->second;
      auto* fn = p.add_function();
      fn->set_id(id);
      fn->set_name(strings.Id(name));
      fn->set_system_name(strings.Id(name));
      if (kind == FrameKind::kKernel) fn->set_filename(strings.Id("[kernel.kallsyms]"));
      if (kind == FrameKind::kWorkload) fn->set_filename(strings.Id("[workload]"));
      if (kind == FrameKind::kProcess) fn->set_filename(strings.Id("[process]"));
      auto* loc = p.add_location();
      loc->set_id(id);
      loc->set_mapping_id(1);
      loc->add_line()->set_function_id(id);
    }
    return it->second;
  };
  const int64_t k_namespace = strings.Id("namespace");
  const int64_t k_pod = strings.Id("pod");
  const int64_t k_container = strings.Id("container");
  const int64_t k_process = strings.Id("process");
  for (const auto& s : stacks) {
    auto* sample = p.add_sample();
    // Innermost first: kernel, user, then the process and the workload as the roots.
    for (auto it = s.kernel.rbegin(); it != s.kernel.rend(); ++it) {
      sample->add_location_id(location(*it, FrameKind::kKernel));
    }
    for (auto it = s.user.rbegin(); it != s.user.rend(); ++it) {
      sample->add_location_id(location(*it, FrameKind::kUser));
    }
    if (!s.process.empty()) sample->add_location_id(location(s.process, FrameKind::kProcess));
    sample->add_location_id(location(WorkloadFrame(s.labels), FrameKind::kWorkload));
    sample->add_value(static_cast<int64_t>(s.count));
    sample->add_value(static_cast<int64_t>(s.ns));
    const std::pair<int64_t, const std::string*> labels[] = {{k_namespace, &s.labels.namespace_},
                                                             {k_pod, &s.labels.pod},
                                                             {k_container, &s.labels.container},
                                                             {k_process, &s.process}};
    for (const auto& [key, value] : labels) {
      auto* l = sample->add_label();
      l->set_key(key);
      l->set_str(strings.Id(*value));
    }
  }
  std::string raw;
  if (!p.SerializeToString(&raw))
    return absl::InternalError("pprof: serializing the profile failed");
  return Gzip(raw);
}

}  // namespace kmon
