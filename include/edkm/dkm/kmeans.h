#pragma once
// Plain (non-differentiable) k-means building blocks used for initialisation, on CPU fp64.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "edkm/export.h"

namespace edkm::kmeans {

/// Exact 1-D k-means: the K centres minimising sum_i counts_i (values_i - c(i))^2 over strictly
/// increasing `values` with non-negative `counts` (a histogram). Dynamic programming with
/// divide-and-conquer split search: O(K * U log U) time, O(K * U) split table.
/// With U <= K every value is a centre and the remaining centres repeat the largest value.
EDKM_API std::vector<double> optimal_1d(const double* values, const double* counts, int64_t u, int64_t k);

/// Near-optimal 1-D k-means for histograms too large for `optimal_1d`: the U sorted values are
/// merged into at most `max_bins` runs of consecutive values (closed at 2U/max_bins values or 2/max_bins of the
/// range, whichever comes first), `optimal_1d`
/// clusters the runs (at their weighted means), then 1-D Lloyd on the full histogram refines the
/// centres (at most `max_iter` iterations, O(K log U) each with prefix sums). Equals `optimal_1d`
/// when U <= max_bins.
EDKM_API std::vector<double> binned_1d(const double* values, const double* counts, int64_t u, int64_t k,
                                       int64_t max_bins, int64_t max_iter);

/// Weighted k-means++ seeding of K centres from points x (n x d, fp64 CPU) with `weights` (n),
/// reproducible for a given seed. Returns K x d.
EDKM_API at::Tensor kmeans_plus_plus(const at::Tensor& x, const at::Tensor& weights, int64_t k, uint64_t seed);

/// Index of the nearest centre (K x d) of every point (n x d), computed in chunks.
EDKM_API at::Tensor nearest(const at::Tensor& x, const at::Tensor& centers);

/// Weighted Lloyd iterations from `centers` until assignments stop changing or `max_iter`.
EDKM_API at::Tensor lloyd(const at::Tensor& x, const at::Tensor& weights, at::Tensor centers, int64_t max_iter);

}  // namespace edkm::kmeans
