// unifaas-oci-shim: the per-spare shim of OCI containers (shim/shim.h). Nothing else.
#include "shim/shim.h"

int main(int argc, char** argv) {
    return unifaas::oci_shim_main(argc, argv);
}
