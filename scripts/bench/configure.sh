#!/bin/sh
# A configure-style script: what autoconf's output does per check, many
# tiny processes (here-docs, $(...) subshells, grep/sed/tr/uname/expr,
# test programs written to disk). Usage: configure.sh [ROUNDS] [DIR]
rounds=${1:-60}
dir=${2:-$(mktemp -d)}
cd "$dir" || exit 1
: >config.log
: >confdefs.h
n=0
while [ "$n" -lt "$rounds" ]; do
    n=$((n + 1))
    cat >conftest.c <<CONF
#include <stdio.h>
/* round $n */
int main(void) { return HAVE_$n; }
CONF
    host=$(uname -m | tr 'a-z' 'A-Z')
    sys=$(uname -s | sed 's/Linux/linux-gnu/')
    if grep -q "round $n" conftest.c; then
        echo "checking for feature $n... yes ($host-$sys)" >>config.log
    fi
    word=$(echo "ac_cv_func_$n" | sed 's/_cv_/_/' | tr '_' '-')
    len=$(expr "$word" : '.*')
    case $len in
        *[!0-9]*) echo "bad length" >&2; exit 1 ;;
    esac
    cat >>confdefs.h <<CONF
#define HAVE_$n 1 /* $word */
CONF
    rm -f conftest.c
done
wc -l <confdefs.h
