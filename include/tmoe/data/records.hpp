#pragma once
// Records and ingestion: several sources of text become one stream of records, which the
// cleaning stages (clean.hpp) and augmentation (augment.hpp) then rewrite or filter.
//
// A source is named by a spec string, as a command line gives it:
//   text:PATH[:recursive=true]                     a file is one record; a folder, one per file
//   jsonl:PATH[:field=text][:id=NAME][:recursive=true]
//                                                  one JSON object per line, text in `field`
//   delimited:PATH[:delim=%][:recursive=true]      records between lines that are exactly
//                                                  `delim` (the fortune(6) format, "%\r" too)
// Options are the trailing ":name=value" segments, so PATH may itself contain ':' as long as
// no segment after one reads "name=value". A folder is read as its regular files in sorted
// order of their path below the folder (subfolders only with recursive=true); symlinks,
// other entries, files holding a NUL byte and, for delimited sources, fortune's *.dat index
// files are skipped and counted in the SourceReport.
//
// Record ids come from the JSON id field (a string or an integer), otherwise they are
// "<file>:<index>" with the 0-based index of the record within its file; Record::source is
// the spec as written. Order is deterministic: specs in the order given, files in sorted
// order, records in file order. Every bad input throws tmoe::Error naming the file (and the
// line, for JSON Lines) and what was expected (DESIGN.md principle 7).
#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <cstring>
#include <iterator>
#include <fstream>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "tmoe/core/error.hpp"

namespace tmoe::data {

struct Record {
  std::string id, source, text;
};

enum class SourceKind { kText, kJsonl, kDelimited };

struct SourceSpec {
  SourceKind kind = SourceKind::kText;
  std::string path;
  std::string field = "text";  // jsonl: the text field; a leading '/' makes it a JSON pointer
  std::string id_field;        // jsonl: the id field; empty: "<file>:<index>"
  std::string delimiter = "%";  // delimited: the separator line
  bool recursive = false;       // folders: descend into subfolders
  std::string spec;             // as written: Record::source, and named in errors
};

// What one source gave, and what its folder listing skipped.
struct SourceReport {
  std::string source;
  std::size_t files = 0, records = 0, bytes = 0;
  std::size_t skipped_dat = 0, skipped_links = 0, skipped_folders = 0, skipped_binary = 0, skipped_other = 0;
};

// The spec grammar, for --help texts and the "expected" part of spec errors.
inline std::string source_spec_help() {
  return "text:PATH, jsonl:PATH[:field=NAME][:id=NAME] or delimited:PATH[:delim=LINE], each optionally "
         "with :recursive=true";
}

namespace records_detail {

inline bool is_blank(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
  });
}

inline std::string read_file(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw Error("cannot be opened for reading", file.string(), "a readable text file");
  std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  if (in.bad()) throw Error("could not be read to the end", file.string(), "a readable text file");
  return text;
}

// A file holding a NUL byte is binary, not text.
inline bool is_text(std::string_view text) { return std::memchr(text.data(), '\0', text.size()) == nullptr; }

inline const char* source_kind_name(SourceKind k) {
  switch (k) {
    case SourceKind::kText: return "text";
    case SourceKind::kJsonl: return "jsonl";
    case SourceKind::kDelimited: return "delimited";
  }
  return "?";
}

inline bool is_option_name(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return (c >= 'a' && c <= 'z') || c == '_'; });
}

inline bool parse_bool_word(std::string_view v, bool& out) {
  if (v == "true" || v == "yes" || v == "on" || v == "1") return out = true, true;
  if (v == "false" || v == "no" || v == "off" || v == "0") return out = false, true;
  return false;
}

// "a number", "an object", "null": a JSON value's type for an error message.
inline std::string json_type(const nlohmann::json& v) {
  const std::string t = v.type_name();
  if (v.is_null()) return t;
  return (t[0] == 'a' || t[0] == 'o' ? "an " : "a ") + t;
}

// Calls emit(record) for each record between lines that are exactly `delim` (or `delim`
// followed by '\r'); a record loses the line end of its last line. With delim "%" this is
// the fortune(6) format.
template <class Emit>
void split_delimited(std::string_view text, std::string_view delim, Emit&& emit) {
  auto finish = [&](std::size_t begin, std::size_t end) {
    if (end > begin && text[end - 1] == '\n') --end;
    if (end > begin && text[end - 1] == '\r') --end;
    emit(text.substr(begin, end - begin));
  };
  std::size_t record_begin = 0, line_begin = 0;
  while (line_begin < text.size()) {
    const std::size_t nl = text.find('\n', line_begin);
    const std::size_t line_end = nl == std::string_view::npos ? text.size() : nl;
    std::string_view line = text.substr(line_begin, line_end - line_begin);
    const std::size_t next = nl == std::string_view::npos ? text.size() : nl + 1;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line == delim) {
      finish(record_begin, line_begin);
      record_begin = next;
    }
    line_begin = next;
  }
  if (record_begin < text.size()) finish(record_begin, text.size());
}

// The files a source reads: `path` itself, or the listing of a folder (see the header
// comment), sorted by their path below the folder.
inline std::vector<std::filesystem::path> source_files(const SourceSpec& s, SourceReport& rep, bool& is_folder) {
  namespace fs = std::filesystem;
  using ::tmoe::detail::cat;
  const std::string expected = cat("a file or folder for source '", s.spec, "' (", source_spec_help(), ")");
  std::error_code ec;
  const fs::file_status status = s.path.empty() ? fs::file_status(fs::file_type::not_found) : fs::status(s.path, ec);
  if (status.type() == fs::file_type::not_found) throw Error("source path does not exist", s.path, expected);
  if (ec) throw Error("source path cannot be accessed: " + ec.message(), s.path, expected);
  is_folder = fs::is_directory(status);
  if (fs::is_regular_file(status)) return {fs::path(s.path)};
  if (!is_folder) throw Error("source path is neither a regular file nor a folder", s.path, expected);

  std::vector<std::pair<std::string, fs::path>> found;  // (path below the folder, path)
  auto classify = [&](const fs::directory_entry& entry, bool& descend) {
    descend = false;
    const fs::file_status st = entry.symlink_status(ec);
    if (ec) throw Error("cannot stat: " + ec.message(), entry.path().string(), "a readable file");
    if (fs::is_symlink(st)) ++rep.skipped_links;
    else if (fs::is_directory(st) && s.recursive) descend = true;
    else if (fs::is_directory(st)) ++rep.skipped_folders;
    else if (!fs::is_regular_file(st)) ++rep.skipped_other;
    else if (s.kind == SourceKind::kDelimited && entry.path().extension() == ".dat") ++rep.skipped_dat;
    else found.emplace_back(entry.path().lexically_relative(s.path).generic_string(), entry.path());
  };
  auto list_error = [&] { return Error("folder cannot be listed: " + ec.message(), s.path, "a readable folder"); };
  if (s.recursive) {
    fs::recursive_directory_iterator it(s.path, ec), end;
    if (ec) throw list_error();
    for (; it != end; it.increment(ec)) {
      if (ec) throw list_error();
      bool descend = false;
      classify(*it, descend);
      if (!descend) it.disable_recursion_pending();
    }
    if (ec) throw list_error();
  } else {
    fs::directory_iterator it(s.path, ec), end;
    if (ec) throw list_error();
    for (; it != end; it.increment(ec)) {
      if (ec) throw list_error();
      bool descend = false;
      classify(*it, descend);
    }
    if (ec) throw list_error();
  }
  std::sort(found.begin(), found.end());
  std::vector<fs::path> files;
  for (auto& f : found) files.push_back(std::move(f.second));
  return files;
}

inline void read_jsonl(const SourceSpec& s, const std::string& file, std::string_view text, std::vector<Record>& out,
                       SourceReport& rep) {
  using ::tmoe::detail::cat;
  using nlohmann::json;
  const bool pointer = !s.field.empty() && s.field.front() == '/';
  json::json_pointer field_ptr;
  if (pointer) {
    try {
      field_ptr = json::json_pointer(s.field);
    } catch (const json::exception& e) {
      throw Error(cat("field '", s.field, "' is not a valid JSON pointer: ", e.what()), s.spec,
                  "a field name, or a JSON pointer such as /meta/text");
    }
  }
  std::size_t line_no = 0, index = 0, begin = 0;
  while (begin < text.size()) {
    ++line_no;
    const std::size_t nl = text.find('\n', begin);
    std::string_view line = text.substr(begin, (nl == std::string_view::npos ? text.size() : nl) - begin);
    begin = nl == std::string_view::npos ? text.size() : nl + 1;
    if (records_detail::is_blank(line)) continue;
    const std::string where = cat(file, ":", line_no);
    json obj;
    try {
      obj = json::parse(line);
    } catch (const json::parse_error& e) {
      throw Error(cat("line ", line_no, " is not valid JSON: ", e.what()), where, "one JSON object per line");
    }
    if (!obj.is_object())
      throw Error(cat("line ", line_no, " is ", json_type(obj), ", not an object"), where,
                  "one JSON object per line");
    const json* value = nullptr;
    if (pointer) {
      if (obj.contains(field_ptr)) value = &obj.at(field_ptr);
    } else if (auto it = obj.find(s.field); it != obj.end()) {
      value = &*it;
    }
    if (!value)
      throw Error(cat("line ", line_no, " has no field \"", s.field, "\""), where,
                  cat("a string field \"", s.field, "\" in every object (choose the field with :field=NAME)"));
    if (!value->is_string())
      throw Error(cat("line ", line_no, ": field \"", s.field, "\" is ", json_type(*value), ", not a string"),
                  where, "the record's text as a JSON string");
    Record r;
    if (!s.id_field.empty()) {
      auto it = obj.find(s.id_field);
      if (it == obj.end())
        throw Error(cat("line ", line_no, " has no id field \"", s.id_field, "\""), where,
                    cat("a string or integer field \"", s.id_field, "\" in every object, or no :id= option"));
      if (it->is_string()) r.id = it->get<std::string>();
      else if (it->is_number_integer()) r.id = it->dump();
      else
        throw Error(cat("line ", line_no, ": id field \"", s.id_field, "\" is ", json_type(*it)), where,
                    "a string or an integer");
    } else {
      r.id = cat(file, ":", index);
    }
    r.source = s.spec;
    r.text = value->get<std::string>();
    rep.bytes += r.text.size();
    ++rep.records;
    ++index;
    out.push_back(std::move(r));
  }
}

}  // namespace records_detail

// Parses "kind:PATH[:name=value]..." (see the header comment); throws tmoe::Error naming
// the spec and what is wrong with it.
inline SourceSpec parse_source_spec(std::string_view spec) {
  using ::tmoe::detail::cat;
  SourceSpec s;
  s.spec = std::string(spec);
  const std::string where = cat("source spec '", spec, "'");
  const std::size_t colon = spec.find(':');
  if (colon == std::string_view::npos)
    throw Error("has no kind: a source is written kind:PATH", where, source_spec_help());
  const std::string_view kind = spec.substr(0, colon);
  if (kind == "text") s.kind = SourceKind::kText;
  else if (kind == "jsonl") s.kind = SourceKind::kJsonl;
  else if (kind == "delimited") s.kind = SourceKind::kDelimited;
  else
    throw Error(cat("unknown source kind '", kind, "'"), where,
                cat("one of text, jsonl, delimited: ", source_spec_help()));

  std::string_view rest = spec.substr(colon + 1);
  std::vector<std::pair<std::string_view, std::string_view>> options;  // trailing ones first
  for (;;) {
    const std::size_t c = rest.rfind(':');
    if (c == std::string_view::npos) break;
    const std::string_view seg = rest.substr(c + 1);
    const std::size_t eq = seg.find('=');
    if (eq == std::string_view::npos || !records_detail::is_option_name(seg.substr(0, eq))) break;
    options.emplace_back(seg.substr(0, eq), seg.substr(eq + 1));
    rest = rest.substr(0, c);
  }
  s.path = std::string(rest);
  if (s.path.empty()) throw Error("has no path after the kind", where, source_spec_help());

  std::vector<std::string_view> seen;
  for (auto it = options.rbegin(); it != options.rend(); ++it) {
    const auto [name, value] = *it;
    if (std::find(seen.begin(), seen.end(), name) != seen.end())
      throw Error(cat("option '", name, "' is given twice"), where, "each option at most once");
    seen.push_back(name);
    const std::string kind_str(kind);
    auto need_value = [&](const char* what) {
      if (value.empty()) throw Error(cat("option '", name, "' has an empty value"), where, what);
    };
    if (name == "recursive") {
      if (!records_detail::parse_bool_word(value, s.recursive))
        throw Error(cat("option recursive='", value, "' is not a bool"), where, "recursive=true or recursive=false");
    } else if (name == "field" && s.kind == SourceKind::kJsonl) {
      need_value("field=NAME with the JSON field that holds the text");
      s.field = std::string(value);
    } else if (name == "id" && s.kind == SourceKind::kJsonl) {
      need_value("id=NAME with the JSON field that holds the record id");
      s.id_field = std::string(value);
    } else if (name == "delim" && s.kind == SourceKind::kDelimited) {
      need_value("delim=LINE with the separator line, e.g. delim=%");
      s.delimiter = std::string(value);
    } else {
      const char* allowed = s.kind == SourceKind::kJsonl       ? "field, id, recursive"
                            : s.kind == SourceKind::kDelimited ? "delim, recursive"
                                                               : "recursive";
      throw Error(cat("unknown option '", name, "' for a ", kind_str, " source"), where,
                  cat("one of: ", allowed));
    }
  }
  return s;
}

// Appends the records of one source to `out` and reports what it read and skipped.
inline SourceReport read_source(const SourceSpec& s, std::vector<Record>& out) {
  using ::tmoe::detail::cat;
  SourceReport rep;
  rep.source = s.spec.empty() ? cat(records_detail::source_kind_name(s.kind), ":", s.path) : s.spec;
  SourceSpec spec = s;
  spec.spec = rep.source;
  bool is_folder = false;
  const auto files = records_detail::source_files(spec, rep, is_folder);
  for (const auto& path : files) {
    const std::string file = path.string();
    const std::string text = records_detail::read_file(path);
    if (!records_detail::is_text(text)) {
      if (!is_folder) throw Error("is not a text file (it contains a NUL byte)", file, "a UTF-8 text file");
      ++rep.skipped_binary;
      continue;
    }
    ++rep.files;
    if (spec.kind == SourceKind::kJsonl) {
      records_detail::read_jsonl(spec, file, text, out, rep);
      continue;
    }
    std::size_t index = 0;
    auto emit = [&](std::string_view record) {
      out.push_back(Record{cat(file, ":", index++), spec.spec, std::string(record)});
      rep.bytes += record.size();
      ++rep.records;
    };
    if (spec.kind == SourceKind::kText) emit(text);
    else records_detail::split_delimited(text, spec.delimiter, emit);
  }
  if (rep.files == 0 && is_folder)
    throw Error(cat("folder has no usable files (skipped ", rep.skipped_dat, " *.dat, ", rep.skipped_links,
                    " symlinks, ", rep.skipped_folders, " subfolders, ", rep.skipped_binary, " binary (NUL bytes), ",
                    rep.skipped_other, " other entries)"),
                s.path, cat("at least one regular text file for source '", spec.spec, "'"));
  return rep;
}

// All records of all sources, in order. `reports`, when given, receives one per source.
// (A span, so that ingest({"text:a", "text:b"}) picks the overload below unambiguously.)
inline std::vector<Record> ingest(std::span<const SourceSpec> specs, std::vector<SourceReport>* reports = nullptr) {
  using ::tmoe::detail::cat;
  if (specs.empty()) throw Error("no sources given", "ingest", cat("at least one source: ", source_spec_help()));
  std::vector<Record> out;
  if (reports) reports->clear();
  for (const auto& s : specs) {
    SourceReport r = read_source(s, out);
    if (reports) reports->push_back(std::move(r));
  }
  return out;
}

inline std::vector<Record> ingest(const std::vector<std::string>& specs, std::vector<SourceReport>* reports = nullptr) {
  std::vector<SourceSpec> parsed;
  for (const auto& s : specs) parsed.push_back(parse_source_spec(s));
  return ingest(std::span<const SourceSpec>(parsed), reports);
}

}  // namespace tmoe::data
