#pragma once
// A temporary directory for a test, removed with everything in it at the end. POSIX calls rather
// than std::filesystem: libtorch.so exports its own std::filesystem symbols, which crash when they interpose on the
// libstdc++ ones.
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

namespace edkm::test {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = "/tmp/edkm_test_XXXXXX";
    if (const char* t = std::getenv("TMPDIR")) tmpl = std::string(t) + "/edkm_test_XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    if (!::mkdtemp(buf.data())) throw std::runtime_error("mkdtemp failed for " + tmpl);
    path_ = buf.data();
  }
  ~TempDir() { remove_tree(path_); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  std::string path(const std::string& name) const { return path_ + "/" + name; }
  /// Names of the entries in the directory.
  std::vector<std::string> entries() const { return entries_of(path_); }
  /// Names of the entries in any directory.
  static std::vector<std::string> entries_of(const std::string& dir) {
    std::vector<std::string> out;
    if (DIR* d = ::opendir(dir.c_str())) {
      while (dirent* e = ::readdir(d)) {
        const std::string name = e->d_name;
        if (name != "." && name != "..") out.push_back(name);
      }
      ::closedir(d);
    }
    return out;
  }

 private:
  static void remove_tree(const std::string& dir) {
    for (const auto& name : entries_of(dir)) {
      const std::string p = dir + "/" + name;
      struct stat st {};
      if (::lstat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
        remove_tree(p);
      } else {
        ::unlink(p.c_str());
      }
    }
    ::rmdir(dir.c_str());
  }
  std::string path_;
};

/// Size of a file in bytes; -1 when it does not exist.
inline int64_t file_size(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? static_cast<int64_t>(st.st_size) : -1;
}

}  // namespace edkm::test
