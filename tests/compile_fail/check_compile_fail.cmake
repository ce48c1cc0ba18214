# cmake -DCXX=<compiler> -DSRC=<file> [-DEXPECT=<text> | -DMUST_COMPILE=ON]
#       -DINCLUDES=<a|b> -DIMPLICIT_INCLUDES=<a|b> -DDEFINES=<a|b> -DOPTIONS=<a|b>
#       -P check_compile_fail.cmake
# Compiles SRC with -fsyntax-only. Without MUST_COMPILE: passes when compilation fails and
# its output contains EXPECT (a plain string, not a pattern). With MUST_COMPILE: passes when
# SRC compiles.
cmake_minimum_required(VERSION 3.25)
foreach(var CXX SRC)
  if(NOT ${var})
    message(FATAL_ERROR "check_compile_fail: ${var} is not set")
  endif()
endforeach()
if(NOT MUST_COMPILE AND "${EXPECT}" STREQUAL "")
  message(FATAL_ERROR "check_compile_fail: give EXPECT (the expected error text) or MUST_COMPILE=ON")
endif()

set(args -std=c++20 -fsyntax-only)
string(REPLACE "|" ";" implicit "${IMPLICIT_INCLUDES}")
foreach(kind INCLUDES DEFINES OPTIONS)
  string(REPLACE "|" ";" items "${${kind}}")
  foreach(item IN LISTS items)
    if(item STREQUAL "" OR (kind STREQUAL "INCLUDES" AND item IN_LIST implicit))
      continue()
    endif()
    if(kind STREQUAL "INCLUDES")
      list(APPEND args "-I${item}")
    elseif(kind STREQUAL "DEFINES")
      list(APPEND args "-D${item}")
    else()
      list(APPEND args "${item}")
    endif()
  endforeach()
endforeach()

execute_process(COMMAND ${CXX} ${args} ${SRC}
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
list(JOIN args " " shown)
set(cmd "${CXX} ${shown} ${SRC}")
string(LENGTH "${out}" len)
if(len GREATER 6000)
  string(SUBSTRING "${out}" 0 6000 out_head)
  set(out_head "${out_head}\n[... ${len} characters in all]")
else()
  set(out_head "${out}")
endif()

if(MUST_COMPILE)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "check_compile_fail: ${SRC} must compile but did not (exit ${rc}).\n"
                        "command: ${cmd}\n${out_head}")
  endif()
  message(STATUS "${SRC} compiles, as it must")
  return()
endif()

if(rc EQUAL 0)
  message(FATAL_ERROR "check_compile_fail: ${SRC} compiled, but it must be rejected with \"${EXPECT}\".\n"
                      "command: ${cmd}")
endif()
string(FIND "${out}" "${EXPECT}" at)
if(at EQUAL -1)
  message(FATAL_ERROR "check_compile_fail: ${SRC} failed to compile, but its output does not contain \"${EXPECT}\".\n"
                      "command: ${cmd}\n${out_head}")
endif()
message(STATUS "${SRC} is rejected with \"${EXPECT}\", as it must be")
