# cmake -DBUILD_DIR=<tmoe build> -DWORK_DIR=<scratch> -DCONSUMER_DIR=<consumer source>
#       -DCXX=<compiler> -DGENERATOR=<generator> -DVERSION=<tmoe version>
#       -P install_find_package.cmake
# 1. cmake --install BUILD_DIR into WORK_DIR/prefix (fresh), and check what landed there;
# 2. configure CONSUMER_DIR against that prefix only, and check tmoe came from it;
# 3. build it at -O0 and run it: one forward of a tiny MoE model, which prints its loss.
cmake_minimum_required(VERSION 3.25)
foreach(var BUILD_DIR WORK_DIR CONSUMER_DIR CXX GENERATOR VERSION)
  if("${${var}}" STREQUAL "")
    message(FATAL_ERROR "install_find_package: ${var} is not set")
  endif()
endforeach()

set(prefix ${WORK_DIR}/prefix)
set(build ${WORK_DIR}/consumer-build)
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

function(step name)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    list(JOIN ARGN " " cmd)
    message(FATAL_ERROR "install_find_package: ${name} failed (exit ${rc}).\ncommand: ${cmd}\n${out}")
  endif()
  set(step_output "${out}" PARENT_SCOPE)
endfunction()

# 1. install
step("cmake --install" ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${prefix})
file(GLOB_RECURSE config_files RELATIVE ${prefix} ${prefix}/*/cmake/tmoe/*.cmake)
foreach(want tmoeConfig.cmake tmoeConfigVersion.cmake tmoeTargets.cmake)
  set(found FALSE)
  foreach(f IN LISTS config_files)
    get_filename_component(n ${f} NAME)
    if(n STREQUAL want)
      set(found TRUE)
    endif()
  endforeach()
  if(NOT found)
    message(FATAL_ERROR "install_find_package: ${want} was not installed under ${prefix}/<libdir>/cmake/tmoe "
                        "(installed: ${config_files})")
  endif()
endforeach()
foreach(header tmoe/tmoe.hpp tmoe/core/concepts.hpp tmoe/backend/cpu/cpu.hpp)
  if(NOT EXISTS ${prefix}/include/${header})
    message(FATAL_ERROR "install_find_package: ${prefix}/include/${header} was not installed")
  endif()
endforeach()

# 2. configure the consumer against the prefix only (no package registry, no source tree)
step("configuring the consumer" ${CMAKE_COMMAND} -S ${CONSUMER_DIR} -B ${build} -G ${GENERATOR}
     -DCMAKE_CXX_COMPILER=${CXX}
     -DCMAKE_BUILD_TYPE=
     -DCMAKE_CXX_FLAGS=-O0
     -DCMAKE_PREFIX_PATH=${prefix}
     -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF
     -DTMOE_EXPECTED_VERSION=${VERSION})
file(STRINGS ${build}/CMakeCache.txt tmoe_dir REGEX "^tmoe_DIR:")
string(REGEX REPLACE "^tmoe_DIR:[A-Z]+=" "" tmoe_dir "${tmoe_dir}")
file(REAL_PATH "${tmoe_dir}" tmoe_dir)
file(REAL_PATH "${prefix}" real_prefix)
string(FIND "${tmoe_dir}" "${real_prefix}/" at)
if(NOT at EQUAL 0)
  message(FATAL_ERROR "install_find_package: the consumer found tmoe in '${tmoe_dir}', not under ${real_prefix}")
endif()

# 3. build and run
step("building the consumer" ${CMAKE_COMMAND} --build ${build} --parallel 1)
step("running the consumer" ${build}/tmoe_consumer)
message(STATUS "${step_output}")
if(NOT step_output MATCHES "loss [0-9]")
  message(FATAL_ERROR "install_find_package: the consumer did not print a loss:\n${step_output}")
endif()
