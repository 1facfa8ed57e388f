# Stage 2, calibration (as the paper's): from the source-trained start, train only the classifier
# conv_seg on the target task, whose classes the start has never seen. A linear classifier on fixed
# features takes a large rate; 100 iterations bring it close to what those features allow, so that the
# fine-tuning gain measures better features, not a half-trained classifier.
#   python tools/train.py THIS_CONFIG --cfg-options load_from=<stage 1 checkpoint>
_base_ = ['./deeplabv3_mv2-d8_1xb8-100it_vocfinetune-128x128.py', '../_base_/calibrate_conv_seg.py']
optim_wrapper = dict(optimizer=dict(lr=0.1))
