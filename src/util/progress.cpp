#include "edkm/util/progress.h"

#include <unistd.h>

#include <fmt/format.h>

#include <cmath>
#include <iostream>
#include <sstream>

namespace edkm {

ProgressBar::ProgressBar(int64_t total, std::string label, std::ostream* out)
    : total_(total > 0 ? total : 1),
      label_(std::move(label)),
      out_(out ? out : &std::cerr),
      tty_(out == nullptr && isatty(fileno(stderr))),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

ProgressBar::~ProgressBar() { finish(); }

double ProgressBar::rate() const {
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  return s > 0 ? static_cast<double>(done_) / s : 0.0;
}

void ProgressBar::tick(const std::string& note, int64_t n) {
  done_ += n;
  note_ = note;
  draw(false);
}

void ProgressBar::finish() {
  if (finished_) return;
  finished_ = true;
  if (!tty_ && last_decile_ == static_cast<int>(10 * done_ / total_)) return;  // already printed
  draw(true);
}

std::string ProgressBar::format_rate(double r) {
  if (!(r > 0) || !std::isfinite(r)) return "- it/s";
  return r < 1.0 ? fmt::format("{:.1f} s/it", 1.0 / r) : fmt::format("{:.1f} it/s", r);
}

std::string ProgressBar::format_duration(double seconds) {
  if (!(seconds >= 0) || !std::isfinite(seconds)) return "?";
  if (seconds < 60) return fmt::format("{:.1f}s", seconds);
  if (seconds < 3600) {
    const auto t = static_cast<int64_t>(seconds + 0.5);
    return fmt::format("{}m{:02}s", t / 60, t % 60);
  }
  const auto m = static_cast<int64_t>(seconds / 60 + 0.5);
  return fmt::format("{}h{:02}m", m / 60, m % 60);
}

void ProgressBar::draw(bool final) {
  const auto now = std::chrono::steady_clock::now();
  const int decile = static_cast<int>(10 * done_ / total_);
  if (!final) {
    if (tty_ && now - last_draw_ < std::chrono::milliseconds(100) && done_ < total_) return;
    if (!tty_ && decile == last_decile_) return;
  }
  last_draw_ = now;
  last_decile_ = decile;
  const double r = rate();
  const double eta = r > 0 ? static_cast<double>(total_ - done_) / r : 0.0;
  constexpr int kWidth = 24;
  const int filled = static_cast<int>(kWidth * std::min<int64_t>(done_, total_) / total_);
  std::ostringstream s;
  s << label_ << " [" << std::string(filled, '#') << std::string(kWidth - filled, '.') << "] " << done_ << "/" << total_
    << " " << format_rate(r) << " ETA " << format_duration(eta);
  if (!note_.empty()) s << "  " << note_;
  if (tty_)
    *out_ << "\r" << s.str() << "\033[K" << (final ? "\n" : "") << std::flush;
  else
    *out_ << s.str() << "\n" << std::flush;
}

}  // namespace edkm
