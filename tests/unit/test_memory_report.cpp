#define BOOST_TEST_MODULE memory_report
#include <boost/test/unit_test.hpp>
#include <fstream>
#include <string>
#include <sys/wait.h>
#include <unistd.h>

#include "../support/tiny.hpp"

// The trainer's start-up memory report (weights, master copy, gradients, optimizer state and
// the predicted activation peak, all from the policies and the config) against the process's
// measured peak resident memory over two training steps, for each precision policy and each
// recompute mode. The shape is large enough (~40-140 MiB) that allocator and thread-stack
// overheads are small beside it.
using namespace tmoe;

namespace {

// kB of a /proc/self/status line
std::int64_t status_kib(const char* key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(key, 0) == 0) return std::stoll(line.substr(std::string(key).size()));
  return -1;
}
// Resets VmHWM (the peak) to the current RSS (Linux >= 4.0).
bool reset_peak() {
  std::ofstream f("/proc/self/clear_refs");
  f << "5";
  return static_cast<bool>(f);
}

Config shape() {
  Config c;
  c.model.vocab_size = 256;
  c.model.context = 256;
  c.model.d_model = 128;
  c.model.n_layers = 4;
  c.model.n_heads = 8;
  c.model.n_experts = 8;
  c.model.top_k = 2;
  c.model.d_expert = 256;
  c.train.batch_size = 8;
  c.train.seq_len = 256;
  c.train.steps = 10;
  return c;
}

// Runs in a fresh child process (memory freed by an earlier case would otherwise be reused
// without showing in the peak): {predicted bytes, measured peak growth in bytes}.
template <class P>
std::pair<double, double> measure(const std::string& mode) {
  int fd[2];
  BOOST_REQUIRE(pipe(fd) == 0);
  const pid_t pid = fork();
  BOOST_REQUIRE(pid >= 0);
  if (pid == 0) {
    close(fd[0]);
    Config c = shape();
    c.model.recompute = mode;
    double out[2] = {-1, -1};
    if (reset_peak()) {
      const std::int64_t base = status_kib("VmRSS:");
      Trainer<test::MoeModel, AdamW, P, Serial, backend::Cpu> tr(c);
      out[0] = static_cast<double>(tr.memory_report().total());
      const BatchFn batches = test::random_batches(c.train.batch_size * c.train.seq_len, c.model.vocab_size);
      tr.train_step(batches);
      tr.train_step(batches);
      out[1] = static_cast<double>(status_kib("VmHWM:") - base) * 1024.0;
    }
    const bool ok = write(fd[1], out, sizeof out) == static_cast<ssize_t>(sizeof out);
    _exit(ok ? 0 : 1);
  }
  close(fd[1]);
  double in[2] = {-1, -1};
  const bool got = read(fd[0], in, sizeof in) == static_cast<ssize_t>(sizeof in);
  close(fd[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  BOOST_REQUIRE(got);
  BOOST_REQUIRE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  return {in[0], in[1]};
}

// Recomputation's measured peak runs above the prediction: the released buffers are
// cached for reuse (tensor.hpp BufferPool, which makes full recomputation 4.5x faster) and
// routed experts' slices of varying size do not always fit each other's cached blocks.
template <class P>
void check(const std::string& mode) {
  const auto [predicted, measured] = measure<P>(mode);
  BOOST_REQUIRE(predicted > 0);
  const double ratio = measured / predicted;
  BOOST_TEST_MESSAGE(P::name << ", recompute " << mode << ": predicted " << predicted / 1048576.0 << " MiB, measured peak "
                             << measured / 1048576.0 << " MiB (ratio " << ratio << ")");
  // Measured: none 1.06, selective 1.09, full 1.26 (the excess is allocator slack,
  // Eigen/thread scratch and, where buffers are released, cached blocks of mismatched sizes).
  BOOST_TEST(ratio > 0.9);
  BOOST_TEST(ratio < (mode == "none" ? 1.1 : 1.35));
}

}  // namespace

BOOST_AUTO_TEST_CASE(report_matches_measured_peak) {
  set_threads(1);
  for (const char* mode : {"none", "selective", "full"}) check<Fp32>(mode);
  check<MixedBf16>("none");
  check<Fp64>("none");
}
