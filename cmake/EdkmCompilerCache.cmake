# Use ccache when it is installed (2-core machines rebuild LibTorch-heavy TUs slowly).
find_program(EDKM_CCACHE ccache)
if(EDKM_CCACHE AND NOT CMAKE_CXX_COMPILER_LAUNCHER)
  set(CMAKE_CXX_COMPILER_LAUNCHER "${EDKM_CCACHE}")
  set(CMAKE_CUDA_COMPILER_LAUNCHER "${EDKM_CCACHE}")
endif()
