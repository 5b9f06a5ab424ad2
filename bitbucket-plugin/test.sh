#!/usr/bin/env bash
# Compiles the companion authenticator against the SPI stand-ins (test-support/) and Debian's servlet API, and
# runs its JUnit tests. Output in $OUT (default target/bitbucket-plugin under the repository).
# Needs: javac/java 17, /usr/share/java/{servlet-api,junit4,hamcrest-core}.jar (Debian: libservlet-api-java, junit4).
set -euo pipefail
cd "$(dirname "$0")"
OUT="${OUT:-../target/bitbucket-plugin}"
rm -rf "$OUT" && mkdir -p "$OUT/classes" "$OUT/test-classes"
CP_LIBS="/usr/share/java/servlet-api.jar"
TEST_LIBS="$CP_LIBS:/usr/share/java/junit4.jar:/usr/share/java/hamcrest-core.jar"
javac -Xlint:all -Werror --release 17 -d "$OUT/classes" -cp "$CP_LIBS" $(find src/main/java test-support -name '*.java')
javac -Xlint:all,-rawtypes,-unchecked --release 17 -d "$OUT/test-classes" -cp "$OUT/classes:$TEST_LIBS" $(find src/test/java -name '*.java')
if [ "${1:-}" != "--compile-only" ]; then
  java -cp "$OUT/classes:$OUT/test-classes:$TEST_LIBS" org.junit.runner.JUnitCore com.bbsso.bitbucket.AuthenticatorTest
fi
echo "companion authenticator: compiled in $OUT"
