#pragma once
// A terminal progress bar with rate and ETA for long work (training steps, calibration).
#include <chrono>
#include <cstdint>
#include <ostream>
#include <string>

#include "edkm/export.h"

namespace edkm {

/// Draws `label [#####.....] 40/100 12.3 it/s ETA 4.9s` on `out`, redrawn in place on a terminal,
/// or one line per 10% otherwise (logs stay readable). Below one item per second the rate reads
/// `12.6 s/it`, and an ETA over a minute `3m07s` (over an hour `2h05m`).
///
/// Example:
///   edkm::ProgressBar bar(steps, "finetune");
///   for (int i = 0; i < steps; ++i) { ...; bar.tick("loss 0.12"); }
class EDKM_API ProgressBar {
 public:
  ProgressBar(int64_t total, std::string label, std::ostream* out = nullptr);
  ~ProgressBar();
  /// Advances by `n` and redraws, with `note` after the ETA.
  void tick(const std::string& note = {}, int64_t n = 1);
  /// Draws the final state (also done by the destructor).
  void finish();
  /// Items per second so far.
  double rate() const;
  /// `12.3 it/s`, or `12.6 s/it` below one item per second (`- it/s` for none yet).
  static std::string format_rate(double items_per_second);
  /// `4.9s`, `3m07s`, `2h05m`.
  static std::string format_duration(double seconds);

 private:
  void draw(bool final);
  int64_t total_, done_ = 0;
  std::string label_, note_;
  std::ostream* out_;
  bool tty_;
  bool finished_ = false;
  int last_decile_ = -1;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

}  // namespace edkm
