// Renders a results JSON as an SVG bar chart (benchmarks/svg_chart.h): the one chart
// implementation, used by the C++ benchmarks directly and by the Python peers benchmark through
// this program.
//
//   edkm_bench_chart --json results.json --rows rows --category matrix --series config \
//       --value step_seconds --title "step time" --y-label s --out chart.svg [--log]
//
// The rows are a JSON array of objects: the document itself, or its member `--rows`. Each row
// gives one bar per --value key: its category (x axis; several keys joined with " "), its series
// (colour: the --series key's value and/or the value key) and its value (a number; rows without
// one are skipped).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "results_io.h"
#include "svg_chart.h"

namespace {

std::string text_of(const nlohmann::json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); }

}  // namespace

int main(int argc, char** argv) try {
  CLI::App app{"edkm: render a benchmark results JSON as an SVG bar chart"};
  std::string json_path, rows_key, category, series_key, value_key, title, y_label, out, machine;
  bool log_scale = false;
  app.add_option("--json", json_path, "results JSON")->required();
  app.add_option("--rows", rows_key, "member holding the array of rows (default: the document is the array)");
  app.add_option("--category", category, "comma-separated keys naming a bar's x-axis category")->required();
  app.add_option("--series", series_key, "key naming a bar's series (colour); default: one series");
  app.add_option("--value", value_key, "key of the bar's value; several (comma-separated): one series each")
      ->required();
  app.add_option("--title", title);
  app.add_option("--y-label", y_label);
  app.add_option("--machine", machine, "machine line (default: the document's \"machine\", else EDKM_BENCH_MACHINE)");
  app.add_flag("--log", log_scale, "log-scale y axis");
  app.add_option("--out", out, "SVG file to write")->required();
  CLI11_PARSE(app, argc, argv);
  edkm::bench::make_out_dir(out);

  std::ifstream f(json_path);
  if (!f) throw std::runtime_error("cannot open " + json_path);
  const auto doc = nlohmann::json::parse(f);
  const auto& rows = rows_key.empty() ? doc : doc.at(rows_key);
  if (!rows.is_array()) throw std::runtime_error(json_path + ": the rows are not a JSON array");

  edkm::bench::BarChart chart;
  chart.title = title;
  chart.y_label = y_label.empty() ? value_key : y_label;
  chart.machine = !machine.empty()                             ? machine
                  : doc.is_object() && doc.contains("machine") ? text_of(doc["machine"])
                                                               : edkm::bench::machine_name();
  chart.log_scale = log_scale;
  const auto keys = edkm::bench::split(category);
  const auto values = edkm::bench::split(value_key);
  for (const auto& r : rows)
    for (const auto& vk : values) {
      if (!r.is_object() || !r.contains(vk) || !r[vk].is_number()) continue;
      std::string cat;
      for (const auto& k : keys) cat += (cat.empty() ? "" : " ") + (r.contains(k) ? text_of(r[k]) : std::string("?"));
      std::string ser = series_key.empty() ? vk : (r.contains(series_key) ? text_of(r[series_key]) : "?");
      if (!series_key.empty() && values.size() > 1) ser += " " + vk;
      auto c = std::find(chart.categories.begin(), chart.categories.end(), cat);
      if (c == chart.categories.end()) {
        chart.categories.push_back(cat);
        for (auto& s : chart.series) s.values.push_back(std::nan(""));
        c = chart.categories.end() - 1;
      }
      auto s = std::find_if(chart.series.begin(), chart.series.end(), [&](const auto& x) { return x.name == ser; });
      if (s == chart.series.end()) {
        chart.series.push_back({ser, std::vector<double>(chart.categories.size(), std::nan(""))});
        s = chart.series.end() - 1;
      }
      s->values[static_cast<size_t>(c - chart.categories.begin())] = r[vk].get<double>();
    }
  if (chart.categories.empty()) throw std::runtime_error(json_path + ": no row has a numeric '" + value_key + "'");
  chart.save(out);
  return 0;
} catch (const std::exception& e) {
  // A c10::Error's message without its C++ backtrace.
  const std::string what = e.what();
  std::cerr << "edkm_bench_chart: " << what.substr(0, what.find("\nException raised from")) << "\n";
  return 1;
}
