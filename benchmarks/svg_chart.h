#pragma once
// A tiny SVG bar-chart writer for the benchmark results: grouped bars (categories on the x axis,
// one colour per series), linear or log-scale y axis, value labels, title, machine name. No
// dependencies beyond the standard library; the output is standalone SVG 1.1 (valid XML).
//
// Example:
//   edkm::bench::BarChart chart;
//   chart.title = "DKM memory, LLaMA-7B layer";
//   chart.machine = "2-core x86-64 CPU, 24 GiB, no GPU";
//   chart.y_label = "x less memory than dense";
//   chart.log_scale = true;
//   chart.categories = {"q_proj", "up_proj"};
//   chart.series = {{"table", {1600, 4100}}, {"streaming", {5e5, 1e6}}};
//   chart.save("benchmarks/results/ablation.svg");
#include "results_io.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace edkm::bench {

struct BarSeries {
  std::string name;
  std::vector<double> values;  // one per category; NaN: no bar (not measured)
};

struct BarChart {
  std::string title, machine, y_label;
  std::vector<std::string> categories;
  std::vector<BarSeries> series;
  bool log_scale = false;  // log10 y axis (values <= 0 get no bar and the label "0")
  int width = 0;           // 0: sized from the number of bars
  int height = 420;

  /// The chart as an SVG document.
  std::string to_svg() const;
  /// Writes to_svg() to `path` atomically (temporary file, fsync, rename).
  void save(const std::string& path) const;
};

/// XML-escapes text for element content and attribute values.
inline std::string xml_escape(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&apos;";
        break;
      default:
        // control characters other than tab / newline are not allowed in XML 1.0
        if (static_cast<unsigned char>(c) >= 0x20 || c == '\t' || c == '\n') out += c;
    }
  }
  return out;
}

/// Short number for labels: 3 significant digits with k/M/G suffixes (1500 -> "1.5k").
inline std::string short_number(double v) {
  if (!std::isfinite(v)) return std::isnan(v) ? "-" : "inf";
  const double a = std::fabs(v);
  char buf[32];
  if (a >= 1e9)
    std::snprintf(buf, sizeof buf, "%.3gG", v / 1e9);
  else if (a >= 1e6)
    std::snprintf(buf, sizeof buf, "%.3gM", v / 1e6);
  else if (a >= 1e3)
    std::snprintf(buf, sizeof buf, "%.3gk", v / 1e3);
  else
    std::snprintf(buf, sizeof buf, "%.3g", v);
  return buf;
}

inline std::string BarChart::to_svg() const {
  static const char* kColors[] = {"#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
                                  "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"};
  for (const auto& s : series)
    if (s.values.size() != categories.size())
      throw std::invalid_argument("svg chart: series '" + s.name + "' has " + std::to_string(s.values.size()) +
                                  " values for " + std::to_string(categories.size()) + " categories");
  const int n_series = std::max<int>(1, static_cast<int>(series.size()));
  const int bar_w = 18, group_gap = 24, left = 80, right = 20, top = 64, bottom = 110;
  const int group_w = n_series * bar_w + group_gap;
  const int w = width > 0
                    ? width
                    : std::max(480, left + right + static_cast<int>(categories.size()) * group_w + 150 /* legend */);
  const int plot_w = w - left - right - 150, plot_h = height - top - bottom;

  // y range
  double lo = 0, hi = 0;
  bool any = false;
  for (const auto& s : series)
    for (double v : s.values) {
      if (!std::isfinite(v) || (log_scale && v <= 0)) continue;
      if (!any) lo = hi = v;
      lo = std::min(lo, v), hi = std::max(hi, v), any = true;
    }
  if (!any) lo = log_scale ? 1 : 0, hi = 1;
  double y0, y1;  // axis range (log10 units on a log axis)
  if (log_scale) {
    y0 = std::floor(std::log10(lo));
    y1 = std::ceil(std::log10(hi));
    if (y1 <= y0) y1 = y0 + 1;
  } else {
    y0 = std::min(0.0, lo);
    y1 = hi > y0 ? hi * 1.1 : y0 + 1;
  }
  auto y_of = [&](double v) {
    const double t = log_scale ? (std::log10(v) - y0) / (y1 - y0) : (v - y0) / (y1 - y0);
    return top + plot_h - t * plot_h;
  };

  std::ostringstream o;
  o.precision(6);
  o << "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    << "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"" << w << "\" height=\"" << height
    << "\" viewBox=\"0 0 " << w << " " << height << "\" font-family=\"sans-serif\" font-size=\"11\">\n"
    << "<rect x=\"0\" y=\"0\" width=\"" << w << "\" height=\"" << height << "\" fill=\"white\"/>\n"
    << "<text x=\"" << w / 2 << "\" y=\"22\" text-anchor=\"middle\" font-size=\"15\" font-weight=\"bold\">"
    << xml_escape(title) << "</text>\n"
    << "<text x=\"" << w / 2 << "\" y=\"40\" text-anchor=\"middle\" fill=\"#555\">" << xml_escape(machine)
    << (log_scale ? " (log scale)" : "") << "</text>\n";
  // grid and ticks
  const int ticks = log_scale ? static_cast<int>(y1 - y0) : 5;
  for (int i = 0; i <= ticks; ++i) {
    const double v = log_scale ? std::pow(10.0, y0 + i) : y0 + (y1 - y0) * i / ticks;
    const double y = y_of(v);
    o << "<line x1=\"" << left << "\" y1=\"" << y << "\" x2=\"" << left + plot_w << "\" y2=\"" << y
      << "\" stroke=\"#ddd\"/>\n"
      << "<text x=\"" << left - 6 << "\" y=\"" << y + 4 << "\" text-anchor=\"end\">" << xml_escape(short_number(v))
      << "</text>\n";
  }
  o << "<line x1=\"" << left << "\" y1=\"" << top << "\" x2=\"" << left << "\" y2=\"" << top + plot_h
    << "\" stroke=\"#333\"/>\n<line x1=\"" << left << "\" y1=\"" << top + plot_h << "\" x2=\"" << left + plot_w
    << "\" y2=\"" << top + plot_h << "\" stroke=\"#333\"/>\n"
    << "<text transform=\"translate(16," << top + plot_h / 2 << ") rotate(-90)\" text-anchor=\"middle\">"
    << xml_escape(y_label) << "</text>\n";
  // bars
  const double base = log_scale ? std::pow(10.0, y0) : std::max(0.0, y0);
  for (size_t c = 0; c < categories.size(); ++c) {
    const double gx = left + 12 + static_cast<double>(c) * group_w;
    for (size_t s = 0; s < series.size(); ++s) {
      const double v = series[s].values[c];
      const double x = gx + static_cast<double>(s) * bar_w;
      if (std::isnan(v)) continue;
      const bool drawable = std::isfinite(v) && (!log_scale || v > 0);
      if (drawable) {
        const double ytop = y_of(std::max(v, base)), ybase = y_of(base);
        o << "<rect x=\"" << x << "\" y=\"" << std::min(ytop, ybase) << "\" width=\"" << bar_w - 2 << "\" height=\""
          << std::fabs(ybase - ytop) << "\" fill=\"" << kColors[s % 10] << "\"><title>"
          << xml_escape(series[s].name + " / " + categories[c] + ": " + short_number(v)) << "</title></rect>\n";
      }
      const double ly = drawable ? y_of(std::max(v, base)) - 3 : top + plot_h - 3;
      o << "<text x=\"" << x + (bar_w - 2) / 2.0 << "\" y=\"" << ly << "\" text-anchor=\"middle\" font-size=\"8\">"
        << xml_escape(drawable || !std::isfinite(v) ? short_number(v) : "0") << "</text>\n";
    }
    const double cx = gx + n_series * bar_w / 2.0;
    o << "<text transform=\"translate(" << cx << "," << top + plot_h + 12 << ") rotate(-35)\" text-anchor=\"end\">"
      << xml_escape(categories[c]) << "</text>\n";
  }
  // legend
  for (size_t s = 0; s < series.size(); ++s) {
    const int lx = left + plot_w + 16, ly = top + 4 + static_cast<int>(s) * 18;
    o << "<rect x=\"" << lx << "\" y=\"" << ly << "\" width=\"12\" height=\"12\" fill=\"" << kColors[s % 10]
      << "\"/>\n<text x=\"" << lx + 18 << "\" y=\"" << ly + 10 << "\">" << xml_escape(series[s].name) << "</text>\n";
  }
  o << "</svg>\n";
  return o.str();
}

inline void BarChart::save(const std::string& path) const { edkm::write_text_file(path, to_svg()); }

}  // namespace edkm::bench
