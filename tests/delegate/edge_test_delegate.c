/* A real TFLite external delegate for the tests: it claims a chosen builtin op (RESHAPE, RELU,
 * both, or none) and runs the claimed nodes in its own kernel, exactly as TFLite would
 * (RESHAPE copies the bytes, RELU is max(x, 0) on float32), so results stay correct while the
 * delegate serves and every kernel call is counted.
 *
 * Options (key=value, as load_delegate passes them):
 *   claim         reshape | relu | reshape,relu | none   (default: reshape)
 *   control_file  a file holding one word that switches behaviour at run time:
 *                   ok, fail_prepare (Prepare fails), fail_invoke (the kernel returns an
 *                   error), hang (the kernel blocks until the word changes), nan (the kernel
 *                   writes NaN into its float outputs)
 *   log_file      every option received, each Prepare and destroy are appended here
 *
 * Exported for the tests: edge_test_delegate_invocations() (claimed nodes run since load).
 */
#define _POSIX_C_SOURCE 200809L
#include "tflite_abi.h"

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
  char control_file[1024];
  char log_file[1024];
  bool claim_reshape;
  bool claim_relu;
  TfLiteDelegate delegate;
} Options;

typedef struct {
  Options *opts;
  int count;
  int *op;      /* builtin code of each replaced node */
  int *input;   /* its first input tensor */
  int *output;  /* its output tensor */
} Kernel;

static atomic_llong invocations;

long long edge_test_delegate_invocations(void) { return atomic_load(&invocations); }

static void log_line(const Options *o, const char *fmt, const char *a, const char *b) {
  if (o->log_file[0] == '\0') return;
  FILE *f = fopen(o->log_file, "a");
  if (f == NULL) return;
  fprintf(f, fmt, a, b);
  fputc('\n', f);
  fclose(f);
}

/* the control word now in effect ("ok" when there is no control file) */
static void control(const Options *o, char *word, size_t size) {
  snprintf(word, size, "ok");
  if (o->control_file[0] == '\0') return;
  FILE *f = fopen(o->control_file, "r");
  if (f == NULL) return;
  if (fgets(word, (int)size, f) == NULL) snprintf(word, size, "ok");
  fclose(f);
  word[strcspn(word, " \r\n")] = '\0';
}

static bool claims(const Options *o, int code) {
  return (code == kOpReshape && o->claim_reshape) || (code == kOpRelu && o->claim_relu);
}

static void *kernel_init(TfLiteContext *context, const char *buffer, size_t length) {
  (void)length;
  const TfLiteDelegateParams *params = (const TfLiteDelegateParams *)buffer;
  Kernel *k = calloc(1, sizeof(Kernel));
  if (k == NULL) return NULL;
  k->opts = (Options *)params->delegate->data_;
  k->count = params->nodes_to_replace->size;
  k->op = calloc((size_t)k->count, sizeof(int));
  k->input = calloc((size_t)k->count, sizeof(int));
  k->output = calloc((size_t)k->count, sizeof(int));
  for (int i = 0; i < k->count; i++) {
    TfLiteNode *node;
    TfLiteRegistration *reg;
    if (context->GetNodeAndRegistration(context, params->nodes_to_replace->data[i], &node,
                                        &reg) != kTfLiteOk)
      return k;
    k->op[i] = reg->builtin_code;
    k->input[i] = node->inputs->data[0];
    k->output[i] = node->outputs->data[0];
  }
  return k;
}

static void kernel_free(TfLiteContext *context, void *buffer) {
  (void)context;
  Kernel *k = buffer;
  if (k == NULL) return;
  free(k->op);
  free(k->input);
  free(k->output);
  free(k);
}

static TfLiteStatus kernel_prepare(TfLiteContext *context, TfLiteNode *node) {
  (void)context;
  return node->user_data == NULL ? kTfLiteError : kTfLiteOk;
}

static TfLiteStatus kernel_invoke(TfLiteContext *context, TfLiteNode *node) {
  Kernel *k = node->user_data;
  char word[64];
  control(k->opts, word, sizeof word);
  if (strcmp(word, "fail_invoke") == 0) {
    context->ReportError(context, "edge_test_delegate: invoke failed (control file)");
    return kTfLiteError;
  }
  while (strcmp(word, "hang") == 0) {  /* a wedged accelerator; released when the word changes */
    struct timespec pause = {0, 10 * 1000 * 1000};
    nanosleep(&pause, NULL);
    control(k->opts, word, sizeof word);
  }
  bool nan_out = strcmp(word, "nan") == 0;
  for (int i = 0; i < k->count; i++) {
    const TfLiteTensor *in = &context->tensors[k->input[i]];
    TfLiteTensor *out = &context->tensors[k->output[i]];
    if (k->op[i] == kOpReshape) {
      if (in->bytes != out->bytes) {
        context->ReportError(context, "edge_test_delegate: reshape of %d bytes into %d",
                             (int)in->bytes, (int)out->bytes);
        return kTfLiteError;
      }
      memmove(out->data, in->data, in->bytes);
    } else if (k->op[i] == kOpRelu && in->type == kTfLiteFloat32) {
      const float *x = in->data;
      float *y = out->data;
      size_t n = out->bytes / sizeof(float);
      for (size_t j = 0; j < n; j++) y[j] = x[j] > 0.0f ? x[j] : 0.0f;
    } else {
      context->ReportError(context, "edge_test_delegate: cannot run op %d", k->op[i]);
      return kTfLiteError;
    }
    if (nan_out && out->type == kTfLiteFloat32) {
      float *y = out->data;
      size_t n = out->bytes / sizeof(float);
      for (size_t j = 0; j < n; j++) y[j] = NAN;
    }
    atomic_fetch_add(&invocations, 1);
  }
  return kTfLiteOk;
}

static TfLiteStatus delegate_prepare(TfLiteContext *context, TfLiteDelegate *delegate) {
  Options *o = delegate->data_;
  char word[64];
  control(o, word, sizeof word);
  if (strcmp(word, "fail_prepare") == 0) {
    log_line(o, "prepare failed%s%s", "", "");
    context->ReportError(context, "edge_test_delegate: Prepare failed (control file)");
    return kTfLiteError;
  }
  TfLiteIntArray *plan;
  if (context->GetExecutionPlan(context, &plan) != kTfLiteOk) return kTfLiteError;
  TfLiteIntArray *claimed = malloc(sizeof(TfLiteIntArray) + sizeof(int) * (size_t)plan->size);
  if (claimed == NULL) return kTfLiteError;
  claimed->size = 0;
  for (int i = 0; i < plan->size; i++) {
    TfLiteNode *node;
    TfLiteRegistration *reg;
    if (context->GetNodeAndRegistration(context, plan->data[i], &node, &reg) != kTfLiteOk)
      continue;
    if (!claims(o, reg->builtin_code) || node->inputs->size < 1 || node->outputs->size != 1)
      continue;
    const TfLiteTensor *in = &context->tensors[node->inputs->data[0]];
    if (reg->builtin_code == kOpRelu && in->type != kTfLiteFloat32) continue;
    claimed->data[claimed->size++] = plan->data[i];
  }
  char count[32];
  snprintf(count, sizeof count, "%d", claimed->size);
  log_line(o, "prepare claimed=%s%s", count, "");
  TfLiteStatus status = kTfLiteOk;
  if (claimed->size > 0) {
    TfLiteRegistration reg;
    memset(&reg, 0, sizeof reg);
    reg.init = kernel_init;
    reg.free = kernel_free;
    reg.prepare = kernel_prepare;
    reg.invoke = kernel_invoke;
    reg.builtin_code = 51; /* BuiltinOperator_DELEGATE */
    reg.custom_name = "EdgeTestDelegate";
    reg.version = 1;
    status = context->ReplaceNodeSubsetsWithDelegateKernels(context, reg, claimed, delegate);
  }
  free(claimed);
  return status;
}

TfLiteDelegate *tflite_plugin_create_delegate(char **keys, char **values, size_t n,
                                              void (*report_error)(const char *)) {
  Options *o = calloc(1, sizeof(Options));
  if (o == NULL) return NULL;
  o->claim_reshape = true;
  for (size_t i = 0; i < n; i++) {
    if (strcmp(keys[i], "control_file") == 0) {
      snprintf(o->control_file, sizeof o->control_file, "%s", values[i]);
    } else if (strcmp(keys[i], "log_file") == 0) {
      snprintf(o->log_file, sizeof o->log_file, "%s", values[i]);
    } else if (strcmp(keys[i], "claim") == 0) {
      o->claim_reshape = strstr(values[i], "reshape") != NULL;
      o->claim_relu = strstr(values[i], "relu") != NULL;
    }
  }
  for (size_t i = 0; i < n; i++) log_line(o, "option %s=%s", keys[i], values[i]);
  char word[64];
  control(o, word, sizeof word);
  if (strcmp(word, "fail_create") == 0) {
    if (report_error != NULL) report_error("edge_test_delegate: create failed (control file)");
    log_line(o, "create failed%s%s", "", "");
    free(o);
    return NULL;
  }
  log_line(o, "created%s%s", "", "");
  o->delegate.data_ = o;
  o->delegate.Prepare = delegate_prepare;
  return &o->delegate;
}

void tflite_plugin_destroy_delegate(TfLiteDelegate *delegate) {
  if (delegate == NULL) return;
  Options *o = delegate->data_;
  log_line(o, "destroyed%s%s", "", "");
  free(o);
}
