// Prints, as one JSON document on stdout, tmoe's agreement statistics for each JSON-lines
// label file given on the command line: the agreement report under each Cohen weighting,
// Fleiss' kappa over all items, and the default batch filter's decisions.
// test_kappa_sklearn.py compares them with scikit-learn and statsmodels.
#include <cstdio>
#include <exception>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "tmoe/data/annotation.hpp"

namespace {

using nlohmann::ordered_json;
using namespace tmoe::data;

ordered_json scope(const ScopeAgreement& s) {
  return {{"name", s.name},           {"method", s.method},         {"kappa", s.kappa.kappa},
          {"items", s.kappa.items},   {"annotators", s.annotators}, {"raters_per_item", s.raters_per_item}};
}

ordered_json report(const LabelSet& set, const char* weights) {
  AgreementConfig cfg;
  cfg.weights = weights;
  const auto r = agreement_report(set, cfg);
  ordered_json j;
  j["overall"] = scope(r.overall);
  j["pairs"] = ordered_json::array();
  for (auto& p : r.pairs) j["pairs"].push_back({{"a", p.a}, {"b", p.b}, {"kappa", p.kappa.kappa}, {"items", p.kappa.items}});
  j["batches"] = ordered_json::array();
  for (auto& b : r.batches) j["batches"].push_back(scope(b));
  return j;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    ordered_json out = ordered_json::array();
    for (int i = 1; i < argc; ++i) {
      const LabelSet set = read_label_file(argv[i]);
      ordered_json f;
      f["file"] = argv[i];
      f["items"] = set.items.size();
      f["categories"] = set.categories;
      for (const char* w : {"none", "linear", "quadratic"}) f["report"][w] = report(set, w);
      f["fleiss_all"] = fleiss_kappa(set).kappa;
      const auto filt = filter_labels(set);
      f["kept"] = ordered_json::array();
      for (auto& k : filt.kept) f["kept"].push_back({k.item, k.label});
      f["dropped"] = ordered_json::array();
      for (auto& d : filt.dropped) f["dropped"].push_back({d.item, to_string(d.reason)});
      out.push_back(std::move(f));
    }
    std::cout << out.dump() << "\n";
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kappa_dump: %s\n", e.what());
    return 1;
  }
  return 0;
}
